"""What the retrieval study adds to the workbench's registries (imported by ``lit_experiments.registry``)."""
from lit_experiments.registry import register_tool

register_tool("retrieval-report", "lit_experiments.studies.retrieval.report")
