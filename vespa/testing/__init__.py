"""
Fakes for tests of code that uses Vespa: model servers (:mod:`.model_servers`),
the autoscaler stand-in (:mod:`.autoscaler`), an echo backend, and a signer of
requests by hand. No production module imports this package; the demo
(:mod:`vespa.demo`) runs some of them.
"""
