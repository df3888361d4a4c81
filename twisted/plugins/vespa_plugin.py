"""twistd plugins for Vespa: ``twistd vespa`` (the worker)."""

from twisted.application.service import ServiceMaker

vespa_worker = ServiceMaker(
    "Vespa worker",
    "vespa.worker.tap",
    "Serverless worker proxy in front of a model server",
    "vespa",
)

vespa_client = ServiceMaker(
    "Vespa client",
    "vespa.client.tap",
    "Local routing proxy for a Vast serverless endpoint",
    "vespa-client",
)
