"""What the distill study adds to the workbench's registries (imported by ``lit_experiments.registry``)."""
from lit_experiments.registry import register_demo, register_tool

register_tool("distill-demo", "lit_experiments.studies.distill.demo")
register_demo("distill", "distill-demo")
