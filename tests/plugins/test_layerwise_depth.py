"""regplug.depth: where each parameter sits, from its name (no framework needed)."""

from __future__ import annotations

import pytest

from regplug.depth import DepthError, depth_groups, resolve_depths

BERT = ["bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight",
        *[f"bert.encoder.layer.{i}.{leaf}" for i in range(3)
          for leaf in ("attention.self.query.weight", "output.dense.bias")],
        "bert.pooler.dense.weight", "classifier.weight", "classifier.bias"]
GPT2 = ["transformer.wte.weight", "transformer.wpe.weight",
        *[f"transformer.h.{i}.attn.c_attn.weight" for i in range(2)],
        "transformer.ln_f.weight"]
LLAMA = ["model.embed_tokens.weight", *[f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)],
         "model.norm.weight", "lm_head.weight"]
VIT_TIMM = ["cls_token", "pos_embed", "patch_embed.proj.weight",
            *[f"blocks.{i}.mlp.fc1.weight" for i in range(2)], "norm.weight", "head.weight"]


def test_bert_embeddings_bottom_layers_by_number_pooler_and_classifier_top():
    d = resolve_depths(BERT)
    assert d["bert.embeddings.word_embeddings.weight"] == d["bert.embeddings.LayerNorm.weight"] == 0
    assert [d[f"bert.encoder.layer.{i}.output.dense.bias"] for i in range(3)] == [1, 2, 3]
    assert d["bert.encoder.layer.1.attention.self.query.weight"] == 2
    assert d["bert.pooler.dense.weight"] == d["classifier.weight"] == d["classifier.bias"] == 4


@pytest.mark.parametrize("names,top", [(GPT2, "transformer.ln_f.weight"),
                                       (LLAMA, "lm_head.weight"), (VIT_TIMM, "head.weight")],
                         ids=["gpt2-h.N", "llama-layers.N", "timm-blocks.N"])
def test_common_stacks(names, top):
    d = resolve_depths(names)
    assert d[names[0]] == 0
    assert d[top] == max(d.values()) == len(depth_groups(d)) - 1
    blocks = [n for n in names if ".0." in n or ".1." in n]
    assert [d[n] for n in blocks[:2]] == [1, 2]


def test_timm_stem_before_the_first_block_is_bottom_and_final_norm_top():
    d = resolve_depths(VIT_TIMM)
    assert d["cls_token"] == d["pos_embed"] == d["patch_embed.proj.weight"] == 0
    assert d["norm.weight"] == d["head.weight"] == 3


def test_head_named_first_is_still_top_and_embedding_named_last_still_bottom():
    names = ["head.weight", "layers.0.w", "layers.1.w", "tok_embeddings.weight"]
    assert resolve_depths(names) == {"head.weight": 3, "layers.0.w": 1, "layers.1.w": 2,
                                     "tok_embeddings.weight": 0}


def test_embedding_kind_counts_as_bottom():
    d = resolve_depths(["layers.0.w", "layers.1.w", "shared.weight"],
                       kinds={"shared.weight": "embedding"})
    assert d["shared.weight"] == 0


def test_without_blocks_each_top_level_layer_is_a_depth_in_order():
    torch_seq = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight"]
    assert resolve_depths(torch_seq) == {"0.weight": 0, "0.bias": 0, "2.weight": 1,
                                         "2.bias": 1, "4.weight": 2}
    keras_seq = ["dense.kernel", "dense.bias", "dense_1.kernel", "dense_2.kernel"]
    assert list(resolve_depths(keras_seq).values()) == [0, 0, 1, 2]


def test_a_common_prefix_is_dropped_before_grouping():
    d = resolve_depths(["net.fc1.weight", "net.fc2.weight", "net.out.weight"])
    assert d == {"net.fc1.weight": 0, "net.fc2.weight": 1, "net.out.weight": 2}


def test_leftmost_block_number_counts():
    # T5: block.N holds layer.M; the block decides
    d = resolve_depths(["encoder.block.0.layer.1.w", "encoder.block.1.layer.0.w"])
    assert d == {"encoder.block.0.layer.1.w": 0, "encoder.block.1.layer.0.w": 1}


def test_missing_blocks_keep_the_spacing_to_the_top():
    # blocks 0-5 frozen out of the optimizer: the others' distance to the head is as before
    names = [*[f"layers.{i}.w" for i in (6, 8)], "head.w"]
    d = resolve_depths(names)
    assert d == {"layers.6.w": 0, "layers.8.w": 2, "head.w": 3}
    assert depth_groups(d) == [["layers.6.w"], [], ["layers.8.w"], ["head.w"]]


def test_a_parameter_between_the_blocks_is_a_named_error_not_depth_0():
    names = ["layers.0.w", "bridge.weight", "layers.1.w"]
    with pytest.raises(DepthError) as info:
        resolve_depths(names, owner="LayerwiseLR", arg="layers")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("LayerwiseLR: argument 'layers'")
    assert "'bridge.weight'" in msg and "between the blocks" in msg and "patterns" in msg
    # a name that is not required is left out instead
    assert resolve_depths(names, required=["layers.0.w"]) == {"layers.0.w": 0, "layers.1.w": 1}


def test_patterns_bottom_to_top_first_match_wins():
    names = ["emb.w", "enc.0.w", "enc.1.w", "pool.w", "out.w"]
    d = resolve_depths(names, ["emb.*", ["enc.0.*"], "enc.1.*", "*"])
    assert d == {"emb.w": 0, "enc.0.w": 1, "enc.1.w": 2, "pool.w": 3, "out.w": 3}


def test_pattern_errors_name_the_entry_and_the_fix():
    names = ["emb.w", "enc.0.w", "out.w"]
    with pytest.raises(DepthError, match=r"entry 1 \(\['dec\.\*'\]\) matches none of the "
                                         r"model's 3 parameter names"):
        resolve_depths(names, ["emb.*", "dec.*", "*"], owner="X", arg="layers")
    with pytest.raises(DepthError, match=r"entry 2 \(\['enc\.0\.w'\]\) matches only names an "
                                         r"earlier entry already placed"):
        resolve_depths(names, ["emb.*", "enc.*", "enc.0.w", "*"])
    with pytest.raises(DepthError, match=r"parameter 'out.w' matches none of the patterns"):
        resolve_depths(names, ["emb.*", "enc.*"])
    with pytest.raises(DepthError, match="non-empty list"):
        resolve_depths(names, "emb.*")  # type: ignore[arg-type]
    with pytest.raises(DepthError, match="each entry"):
        resolve_depths(names, ["emb.*", []])


def test_depth_groups_lists_names_bottom_to_top():
    d = resolve_depths(LLAMA)
    groups = depth_groups(d)
    assert groups[0] == ["model.embed_tokens.weight"]
    assert groups[-1] == ["model.norm.weight", "lm_head.weight"]
    assert sum(map(len, groups)) == len(LLAMA)
    assert depth_groups({}) == []


def test_without_blocks_a_normalization_layer_shares_the_depth_of_the_layer_before_it():
    names = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "4.weight", "6.weight"]
    kinds = {"1.weight": "normalization", "1.bias": "normalization",
             "4.weight": "normalization"}
    d = resolve_depths(names, kinds=kinds)  # Linear, BatchNorm, ReLU, Linear, BatchNorm, ..
    assert d == {"0.weight": 0, "0.bias": 0, "1.weight": 0, "1.bias": 0, "3.weight": 1,
                 "4.weight": 1, "6.weight": 2}
    assert resolve_depths(names)["6.weight"] == 4  # without kinds each layer counts
    # a leading normalization layer joins the first layer after it
    lead = resolve_depths(["norm.g", "lin.w", "out.w"], kinds={"norm.g": "normalization"})
    assert lead == {"norm.g": 0, "lin.w": 0, "out.w": 1}
