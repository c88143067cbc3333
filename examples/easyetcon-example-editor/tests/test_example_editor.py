"""The example plugin runs easyetcon's conformance suite, exactly as any third party would."""

from easyetcon.testing import EditorConformance


class TestExampleEditor(EditorConformance):
    editor = "example-ft-last"
    # enough steps for each target to lead by the suite's margin, on every tiny architecture
    options = {"steps": 40, "learning_rate": 0.05}
    invalid_options = [{"steps": 0}, {"learning_rate": -1.0}, {"max_change": 0}]
