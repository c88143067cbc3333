"""easyetcon's conformance suite for every intrinsic editor, on every tiny architecture."""

from easyetcon.testing import EditorConformance
from tests.intrinsic.helpers import STRONG_VALUES, TINY_STATISTICS, mend_hypernetwork, sectioned


class TestFTL(EditorConformance):
    editor = "ft-l"
    options = {"steps": 30, "learning_rate": 0.05}
    invalid_options = [{"steps": 0}, {"learning_rate": 0}, {"max_change": -1.0}, {"layers": []}, {"modules": ["attn"]}]


class TestFTM(EditorConformance):
    editor = "ft-m"
    options = {"steps": 40, "learning_rate": 0.05, "layers": [-1]}
    invalid_options = [{"eaft": {"top_k": 1}}, {"layers": "trace"}, {"stop_loss": 0}]


class TestRome(EditorConformance):
    editor = "rome"
    options = sectioned({**STRONG_VALUES, "layer": 0})
    invalid_options = [
        {"layer": "middle"}, {"value": {"kl_prompts": ["is a"]}}, {"value": {"clamp_norm_factor": 0}}, {"value": 3},
        {"statistics": {"source": "wikipedia"}}, {"statistics": {**TINY_STATISTICS, "samples": 0}},
    ]


class TestMemit(EditorConformance):
    editor = "memit"
    options = sectioned({**STRONG_VALUES, "layers": [0, 1], "covariance_weight": 1.0})
    invalid_options = [{"layers": []}, {"covariance_weight": -1.0}, {"key": {"prefix_source": "web"}}, {"key": {"fact_token": "first"}}]
    mode = "batch"


class TestAlphaEdit(EditorConformance):
    editor = "alphaedit"
    options = sectioned({**STRONG_VALUES, "layers": [0, 1], "learning_rate": 0.5})
    invalid_options = [
        {"nullspace_rule": "rank"}, {"energy_fraction": 0.0}, {"energy_fraction": 1.5}, {"l2": 0},
    ]
    mode = "batch"


class TestEmmet(EditorConformance):
    editor = "emmet"
    options = sectioned({**STRONG_VALUES, "layers": [0, 1]})
    invalid_options = [{"layers": []}, {"equality_ridge": -1.0}, {"ridge": -1.0}, {"value": {"steps": 0}}]
    mode = "batch"


class TestUltraEdit(EditorConformance):
    editor = "ultraedit"
    options = {"learning_rate": 0.01, "layers": [0, 1, 2], "module": "mlp_out"}
    invalid_options = [{"layers": []}, {"learning_rate": 0}, {"ridge": -1.0}, {"module": "attn_out"}, {"positions": "subject"}]
    mode = "batch"
    # one closed-form step, no optimisation: on the random tiny models it puts both targets ahead
    # by 0.03-0.20 nats on every architecture (larger steps saturate through the final norm)
    target_margin = 0.02


class TestLocFTBF(EditorConformance):
    editor = "locft-bf"
    options = {"steps": 40, "learning_rate": 0.05, "layers": [-1], "batch_size": 1}  # two requests: two steps per pass
    invalid_options = [{"batch_size": 0}, {"steps": 0}, {"layers": []}, {"append_eos": "sometimes"}]
    mode = "batch"


class TestMend(EditorConformance):
    editor = "mend"
    invalid_options = [{"rank": 0}, {"layers": []}, {"modules": ["attn_out"]}, {"positions": "subject"}, {"steps": 0}]
    # One request: a random 3-layer model's second one-step edit undoes much of the first (its
    # margin falls to -0.6 on GPT-NeoX). That a batch adds each request's own update is checked
    # in tests/intrinsic/test_mend.py.
    request_count = 1
    #: the model the options are for: a hypernetwork is trained per model (make_model sets it)
    architecture = "llama"

    @property
    def options(self):  # type: ignore[override]
        return {"hypernetwork": mend_hypernetwork(self.architecture)}

    def make_model(self, architecture):
        self.architecture = architecture
        return super().make_model(architecture)


class TestNamet(EditorConformance):
    editor = "namet"
    # NAMET's own value options (left-padded δ, linear norm anchor, per-prefix residuals), the norm anchor off as in STRONG_VALUES
    options = sectioned({**STRONG_VALUES, "layers": [0, 1], "covariance_weight": 1.0})
    invalid_options = [{"value": {"delta_position": "random"}}, {"value": {"norm_penalty": "cubic"}}, {"value": {"residual_at": "keys"}}]
    mode = "batch"

    def test_asks_in_the_models_prompt_format(self) -> None:
        """The suite's check reads every forward pass's text. NAMET's δ sits as many tokens before the
        fact token as a prompt is shorter than the longest, in the bare chat prompt inside its user
        header, so the pass from δ on starts mid-header and reads as a prompt outside the format. The
        prompts are MEMIT's: checked with δ at the fact token."""
        self.options = {**self.options, "value": {**self.options["value"], "delta_position": "fact_token"}}
        super().test_asks_in_the_models_prompt_format()


class TestAnyEdit(EditorConformance):
    editor = "anyedit"
    # the tiny targets are one token: one chunk each, which AnyEdit edits as its base editor does
    options = {"chunks": {"size": 4}, "base": {"editor": "memit", **sectioned({**STRONG_VALUES, "layers": [0, 1], "covariance_weight": 1.0})}}
    invalid_options = [
        {"chunks": {"unit": "paragraph"}}, {"chunks": {"size": 0}}, {"base": {"editor": "rome"}},
        {"base": {"editor": "memit", "key": {"fact_token": "subject_last"}}}, {"base": {"editor": "alphaedit", "l2": 0}},
    ]
    mode = "batch"
