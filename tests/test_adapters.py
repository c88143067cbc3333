"""Architecture adapters for every supported family, and the structural fallback."""

import pytest
from torch import nn

from easyetcon.adapters import ArchitectureAdapter, infer_adapter
from easyetcon.errors import UnsupportedModelError
from easyetcon.model import EditableModel
from easyetcon.testing import ARCHITECTURES, tiny_model, tiny_torch_model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_adapter_finds_every_module(toy_host, architecture):
    model = tiny_model(architecture, registry=toy_host.registry)
    adapter, torch_model = model.adapter, model.torch_model
    assert adapter.name == architecture
    assert adapter.num_layers(torch_model) == 3
    hidden = torch_model.get_input_embeddings().weight.shape[1]
    for layer in range(3):
        mlp_in = adapter.in_out_features(adapter.module(torch_model, "mlp_in", layer))
        mlp_out = adapter.in_out_features(adapter.module(torch_model, "mlp_out", layer))
        assert mlp_in[0] == hidden and mlp_out[1] == hidden and mlp_in[1] == mlp_out[0] > hidden
        assert adapter.out_in_weight(adapter.module(torch_model, "mlp_out", layer)).shape == (hidden, mlp_out[0])
        model.parameter(adapter.weight_name("mlp_out", layer))
    assert adapter.final_norm_module(torch_model).weight.shape == (hidden,)
    assert adapter.lm_head_module(torch_model) is torch_model.get_output_embeddings()
    assert adapter.embed_module(torch_model) is torch_model.get_input_embeddings()


def test_gpt2_conv1d_is_transposed_and_llama_linear_is_not(toy_host):
    gpt2 = tiny_model("gpt2", registry=toy_host.registry)
    conv = gpt2.adapter.module(gpt2.torch_model, "mlp_out", 0)
    assert gpt2.adapter.is_transposed(conv) and conv.weight.shape == (128, 32)
    assert gpt2.adapter.out_in_weight(conv).shape == (32, 128)
    llama = tiny_model("llama", registry=toy_host.registry)
    linear = llama.adapter.module(llama.torch_model, "mlp_out", 0)
    assert not llama.adapter.is_transposed(linear)


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gpt-neox"])
def test_structural_fallback_agrees_with_the_registered_adapter(toy_host, architecture):
    torch_model, _ = tiny_torch_model(architecture)
    registered = tiny_model(architecture, registry=toy_host.registry).adapter
    inferred = infer_adapter(torch_model)
    for field in ("layers", "mlp_out", "final_norm", "embed", "lm_head"):
        assert getattr(inferred, field) == getattr(registered, field), field


def test_layer_out_of_range_names_the_count(toy_host):
    model = tiny_model(registry=toy_host.registry)
    with pytest.raises(IndexError, match="has 3 layers"):
        model.adapter.module(model.torch_model, "mlp_out", 7)


class _Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 10)

    def get_input_embeddings(self):
        return self.embedding

    def get_output_embeddings(self):
        return self.proj


def test_unsupported_model_error_names_the_class(toy_host):
    with pytest.raises(UnsupportedModelError, match="_Unknown"):
        EditableModel(_Unknown(), tokenizer=None, registry=toy_host.registry)


def test_custom_adapter_registered_by_a_plugin_wins(monkeypatch):
    from easyetcon.hookspecs import hookimpl
    from easyetcon.plugins import PluginHost

    custom = ArchitectureAdapter("my-llama", "model.layers", "mlp.gate_proj", "mlp.down_proj", "model.norm", "model.embed_tokens", "lm_head")

    class AdapterPlugin:
        @hookimpl
        def easyetcon_register_model_adapters(self, register):
            register("my-llama", custom, matches=lambda model: getattr(model.config, "model_type", "") == "llama")

    monkeypatch.setenv("EASYETCON_BLOCK_PLUGINS", "*")
    host = PluginHost()
    host.register(AdapterPlugin(), name="custom-adapter")
    # Internal adapters registered first; ours is consulted only if the built-in does not match.
    torch_model, tokenizer = tiny_torch_model("llama")
    assert EditableModel(torch_model, tokenizer, registry=host.registry).adapter.name == "llama"
    torch_model.__class__ = type("MyLlama", (nn.Module,), {"forward": torch_model.forward})
    assert EditableModel(torch_model, tokenizer, registry=host.registry).adapter.name == "my-llama"
