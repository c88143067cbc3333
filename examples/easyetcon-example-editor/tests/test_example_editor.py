"""The example plugin runs easyetcon's conformance suite, exactly as any third party would."""

from easyetcon.testing import EditorConformance


class TestExampleEditor(EditorConformance):
    editor = "example-ft-last"
    options = {"steps": 40, "learning_rate": 0.05}
    invalid_options = [{"steps": 0}, {"learning_rate": -1.0}, {"max_change": 0}]
    architectures = ("llama", "gpt2", "qwen2")
    request_count = 2
