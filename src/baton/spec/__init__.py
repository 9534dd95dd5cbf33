"""Workflow files (YAML, version 1): load, validate with file/line/field errors, build."""

from baton.spec.build import YamlWorkflow, load_workflow_file

__all__ = ["YamlWorkflow", "load_workflow_file"]
