"""What the slots study adds to the workbench's registries (imported by ``lit_experiments.registry``)."""
from lit_experiments.registry import register_backbone, register_tool

register_tool("slots-analyze", "lit_experiments.studies.slots.analyze")
register_backbone("colour_edge", "lit_experiments.studies.slots.datamodule:ColourEdgeBackbone.from_registry")
