"""What the multilabel study adds to the workbench's registries (imported by ``lit_experiments.registry``)."""
from lit_experiments.registry import register_demo, register_tool

register_tool("multilabel-demo", "lit_experiments.studies.multilabel.demo")
register_demo("multilabel", "multilabel-demo")
