"""
``vespa-loadtest``: load an endpoint the way real callers do, watch it
live, and get a report with pictures.

Requests (a benchmark probe's payloads, your function's, or a JSONL file's)
are sent open-loop at a rate, fixed or Poisson, optionally ramping, through
Vespa's own client core: routed by the autoscaler, wrapped, retried and
hedged as ``vespa-client`` does (or sent straight to one origin with
``--url``). The parts, in the order a run meets them:

============  ================================================================
``config``    the settings: command line, environment, defaults
``payloads``  what each request is
``schedule``  when each request is due (the rate, the ramp, the arrivals)
``target``    where requests go, through the client core
``runner``    the run: arrivals to requests to samples; Ctrl-C handling
``tokens``    telling tokens in a streamed answer (time to first token)
``stats``     the figures: samples, percentiles, time buckets, the summary
``live``      the live view (``rich`` on a terminal, plain lines otherwise)
``report``    the text summary and the JSON file
``html``      the HTML page with its SVG charts
``cli``       the console script (wiring)
============  ================================================================
"""
