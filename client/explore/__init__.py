"""`vaeserve explore`: a local web page for looking at a served model instead of reading numbers.

`cli.py` registers the command (imports nothing heavy); `app.py` is the page's HTTP server and JSON API (standard
library only, every image computed by the gRPC server through VaeClient); `page.html` is the page; `digits.npz`
holds twenty of the default model's test digits (two per class) to pick from.
"""
