"""``convscope serve``: explore a model in the browser.

A local web application (Starlette on uvicorn) with the project's own small front end (no CDN,
works offline) over the library: the model's layers with shapes, parameters and receptive
fields; a layer's channels as a sortable, searchable grid; a channel's top-k crops and their
deconvnet projections, feature visualization and activation on the current image; an image's
predictions and any registered method's maps, several side by side, computed on demand and
cached. Mining an atlas and rendering channels run as background jobs whose progress the page
polls (they survive a reload). :mod:`~convscope.serve.export` writes what was computed as a
static site.

- :mod:`~convscope.serve.workspace`: every computation, cached (the web layer only translates);
- :mod:`~convscope.serve.app`: the routes, errors as 4xx answers, the access token;
- :mod:`~convscope.serve.jobs`: background work with progress;
- :mod:`~convscope.serve.paths`, :mod:`~convscope.serve.uploads`: what requests may name and send;
- :mod:`~convscope.serve.cli`: the command.

Example::

    convscope serve zoo:shapes-vgg shapes:256        # prints http://127.0.0.1:8765/
"""
