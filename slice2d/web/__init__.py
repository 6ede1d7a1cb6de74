"""The local web app of ``slice2d serve`` (optional extra ``web``): ``app`` (the page and the JSON
API), ``jobs`` (the private workspace, the queue and its worker), ``uploads`` (what may be sent,
and unpacking archives safely), ``results`` (what a finished job offers) and ``static/`` (the
page, with the NiiVue viewer shipped in the package)."""
