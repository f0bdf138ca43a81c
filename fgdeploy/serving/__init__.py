"""Online serving (`fgdeploy serve`): the model behind an HTTP API on Ray Serve, with `infer`'s per-image code.

- ``api``: the HTTP API without Ray: paths, the server's settings, request checks (size, top-k, decoding)
  and the JSON answers.
- ``replica``: the Ray Serve deployment: an HTTP replica, server-side batching (``serve.batch``), the model.
- ``server``: ``serve_forever``: start or join Ray, deploy, wait until healthy, drain on Ctrl-C / SIGTERM.
- ``client``: a small HTTP client of the API (standard library HTTP), used by ``parity --test http://...``.
"""
