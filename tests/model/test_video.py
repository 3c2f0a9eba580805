"""CogVLM2-Video: detection, layout, sampling, preprocessing, sequence layout, batched generation.

Checked against the spec's own numbers and formulas (shared/spec/cogvlm2-video.md), or against a
plain computation written here, never against our modules alone.
"""

from __future__ import annotations

import json
import lzma
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import tiny
from model.api import GenerationSettings, VisualExpertModel
from model.config import CheckpointError, ModelConfig, detect_variant
from model.model import CogVLMForCausalLM, KVCache, rope_positions
from model.processor import CLIP_MEAN, CLIP_STD
from model.released_configs import RELEASED_CONFIGS, VIDEO_RELEASED_CONFIGS
from model.video import (
    CAPTION_PROMPT,
    Video,
    build_video_input_ids,
    crop_offsets,
    preprocess_frame,
    resized_size,
    sample_base,
    sample_chat,
)
from tests.model.test_layout import checkpoint_layout

# CI puts shared/ beside the clone; COGSCALE_SHARED points elsewhere (a worktree, say)
SHARED = Path(os.environ.get("COGSCALE_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    return tiny.write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-video"), "cogvlm2-video", seed=0)


@pytest.fixture(scope="module")
def vvm(video_dir) -> VisualExpertModel:
    return VisualExpertModel.load(video_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    source = SHARED / "tokenizers" / "llama3" / "tokenizer.json.xz"
    if not source.is_file():
        pytest.skip(f"no {source}: set COGSCALE_SHARED to the shared/ directory")
    path = tmp_path_factory.mktemp("llama3") / "tokenizer.json"
    path.write_bytes(lzma.decompress(source.read_bytes()))
    return PreTrainedTokenizerFast(tokenizer_file=str(path))


def random_video(frames: int, height: int, width: int, seed: int) -> Video:
    rng = np.random.default_rng(seed)
    return Video(rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8), tuple(float(t) for t in range(frames)))


# ----------------------------------------------------------------------------- config and layout


@pytest.mark.parametrize("name", sorted(VIDEO_RELEASED_CONFIGS))
def test_video_configs_are_detected_from_the_class_name(name):
    cfg = ModelConfig.from_dict(VIDEO_RELEASED_CONFIGS[name])
    assert (cfg.variant, cfg.is_video, cfg.visual_expert) == ("cogvlm2-video", True, False)
    assert (cfg.num_image_tokens, cfg.eos_token_ids, cfg.pad_token_id, cfg.rope_base) == (66, (128001,), 128002, 500000.0)
    assert (cfg.num_kv_heads, cfg.qkv_size, cfg.max_position_embeddings) == (8, 6144, 2048)


def test_image_configs_are_not_video():
    for raw in RELEASED_CONFIGS.values():
        assert detect_variant(raw) != "cogvlm2-video"
    video = VIDEO_RELEASED_CONFIGS["cogvlm2-llama3-caption"]
    assert detect_variant({**video, "architectures": ["CogVLMForCausalLM"]}) == "cogvlm2"


def test_video_config_needs_224_pixels_and_patch_14():
    raw = VIDEO_RELEASED_CONFIGS["cogvlm2-llama3-caption"]
    bigger = {**raw, "vision_config": {**raw["vision_config"], "image_size": 448, "num_positions": 1025}}
    with pytest.raises(CheckpointError, match="image_size 224"):
        ModelConfig.from_dict(bigger)


def test_real_size_caption_model_has_the_spec_tensor_count_and_parameters():
    with torch.device("meta"):
        model = CogVLMForCausalLM(ModelConfig.from_dict(VIDEO_RELEASED_CONFIGS["cogvlm2-llama3-caption"]))
    state = model.state_dict()
    assert not [k for k in state if "vision_expert" in k or "vision_mlp" in k]
    # spec: 1029 tensors = 32 x 8 + 3 + 770 vision, counting the 32 rotary_emb.inv_freq buffers we
    # recompute; 12,507,530,496 parameters (buffers are not parameters)
    assert len(state) + 32 == 1029
    assert sum(t.numel() for t in state.values()) == 12_507_530_496
    assert tuple(state["model.vision.patch_embedding.position_embedding.weight"].shape) == (257, 1792)
    assert tuple(state["model.layers.0.self_attn.language_expert_query_key_value.weight"].shape) == (6144, 4096)


def test_tiny_video_checkpoint_layout_and_loading(video_dir, vvm):
    raw = json.loads((video_dir / "config.json").read_text())
    assert raw["architectures"] == ["CogVLMVideoForCausalLM"] and raw["vision_config"]["image_size"] == 224
    layout = checkpoint_layout(video_dir)
    rotary = {k for k in layout if k.endswith("rotary_emb.inv_freq")}
    assert len(rotary) == raw["num_hidden_layers"]  # spec: the video checkpoints carry them
    assert not [k for k in layout if "vision_expert" in k or "vision_mlp" in k]
    assert set(layout) - rotary == set(vvm.model.state_dict())
    assert vvm.config.variant == "cogvlm2-video"


def test_tiny_command_line_writes_the_video_variant(tmp_path):
    tiny.main([str(tmp_path / "out"), "--variant", "cogvlm2-video"])
    assert ModelConfig.from_json(tmp_path / "out").is_video


def test_a_vision_expert_key_in_a_video_checkpoint_is_refused(video_dir, tmp_path):
    from tests.model.test_layout import refusal, rewrite_weights

    def add_expert(t):
        t["model.layers.0.mlp.vision_mlp.gate_proj.weight"] = torch.zeros(128, 64)

    assert "unexpected keys (1): model.layers.0.mlp.vision_mlp.gate_proj.weight" in refusal(
        rewrite_weights(video_dir, tmp_path / "ckpt", add_expert)
    )


# ----------------------------------------------------------------------------- sampling


def test_chat_sampling_spec_example_10s_at_30fps():
    timestamps = [i / 30 for i in range(300)]
    assert sample_chat(timestamps) == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270, 299]


def test_chat_sampling_stops_after_24_and_repeats_frames_of_slow_clips():
    assert sample_chat([i / 30 for i in range(60 * 30)]) == [30 * s for s in range(24)]
    # 0.5 fps: second 1 is as close to frame 0 (0 s) as to frame 1 (2 s): the first wins
    assert sample_chat([0.0, 2.0, 4.0]) == [0, 0, 1, 1, 2]


def test_chat_sampling_rounds_half_to_even():
    assert len(sample_chat([0.0, 1.0, 2.5])) == 3  # round(2.5) == 2: seconds 0, 1, 2
    assert len(sample_chat([0.0, 1.0, 3.5])) == 5  # round(3.5) == 4


def test_base_sampling_24_frames_over_the_first_60_seconds():
    assert sample_base(10, 10.0) == [int(x) for x in np.linspace(0, 9, 24)]  # duplicates for short clips
    assert sample_base(30 * 120, 30.0) == [int(x) for x in np.linspace(0, 1799, 24)]
    assert len(sample_base(5000, 29.97)) == 24 and max(sample_base(5000, 29.97)) == int(60 * 29.97) - 1


# ----------------------------------------------------------------------------- preprocessing


def torch_reference(rgb: np.ndarray) -> np.ndarray:
    """The spec's steps with torch, literally: /255, normalise, bilinear short side 224, crop."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    h, w = rgb.shape[:2]
    size = (math.floor(h / w * 224), 224) if w < h else (224, math.floor(w / h * 224))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2))
    return x[0, :, top : top + 224, left : left + 224].numpy()


@pytest.mark.parametrize("height,width", [(1080, 1920), (480, 270), (224, 224), (100, 133), (224, 297), (50, 40)])
def test_frame_preprocessing_matches_torch_bilinear(height, width):
    rgb = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ours = preprocess_frame(rgb)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, torch_reference(rgb), atol=2e-5)


def test_resize_and_crop_arithmetic_from_the_spec():
    assert resized_size(1080, 1920) == (224, 398)
    assert resized_size(1920, 1080) == (398, 224)
    assert crop_offsets(224, 297) == (0, 36)  # (297 - 224) / 2 = 36.5 rounds to even


# ----------------------------------------------------------------------------- sequence layout


def test_chat_layout_with_the_llama3_tokenizer(llama3):
    cfg = ModelConfig.from_dict(VIDEO_RELEASED_CONFIGS["cogvlm2-video-llama3-chat"])
    time_ids = [llama3.encode(str(t), add_special_tokens=False) for t in range(24)]
    assert [t[0] for t in time_ids[:11]] == [15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 605]
    assert time_ids[11] == [806] and time_ids[23] == [1419] and all(len(t) == 1 for t in time_ids)
    text = llama3.encode(f"Question: {CAPTION_PROMPT} Answer:", add_special_tokens=False)
    ids, types = build_video_input_ids(text, 24, cfg, time_ids)
    assert len(ids) == 1620  # spec: 1 + 24 x 67 + 11
    assert ids[:2] == [128000, 128002] and ids[67] == 15 and ids[67 + 67] == 16  # time token after each frame
    positions = rope_positions(torch.tensor(types)).tolist()
    for t in range(24):  # spec: frame t: boi p, patches p+1, eoi p+2, time p+3 with p = 1 + 4t
        p, first = 1 + 4 * t, 1 + 67 * t
        assert positions[first] == p and set(positions[first + 1 : first + 65]) == {p + 1}
        assert positions[first + 65] == p + 2 and positions[first + 66] == p + 3
    assert positions[1 + 24 * 67] == 97  # spec: 24 frames: the text starts at position 97


@pytest.mark.parametrize("frames", [1, 3, 24])
def test_base_layout_is_one_vision_run(frames):
    cfg = ModelConfig.from_dict(VIDEO_RELEASED_CONFIGS["cogvlm2-video-llama3-base"])
    ids, types = build_video_input_ids([5, 6], frames, cfg, None)
    assert len(ids) == 1 + 66 * frames + 2
    positions = rope_positions(torch.tensor(types)).tolist()
    # spec: bos 0, first boi 1, every other video token 2, last eoi 3, text from 4, whatever T is
    assert positions[:2] == [0, 1] and set(positions[2 : 66 * frames]) == {2}
    assert positions[66 * frames :] == [3, 4, 5]


# ----------------------------------------------------------------------------- generation


def oracle_logits(vvm, video: Video, prompt: str, template: str) -> torch.Tensor:
    """Next-token logits of one unpadded row in one causal pass: the spec's layout written out."""
    model, tok, cfg = vvm.model, vvm.tokenizer, vvm.config
    pixels = torch.stack([torch.from_numpy(torch_reference(f)) for f in video.frames])
    features = model.encode_images(pixels).flatten(0, 1)  # frame-major [T * 66, H]
    time_ids = [tok.encode(str(t), add_special_tokens=False) for t in range(len(pixels))] if template == "chat" else None
    ids, types = build_video_input_ids(tok.encode(prompt, add_special_tokens=False), len(pixels), cfg, time_ids)
    types = torch.tensor(types)
    x = model.embed(torch.tensor([ids]))
    x[0, types == 1] = features
    cache = KVCache.allocate(cfg, 1, len(ids), "cpu", torch.float32)
    h = model(x, rope_positions(types)[None], None, None, cache, 0)
    return model.logits(h[:, -1])[0]


@pytest.mark.parametrize("template", ["chat", "base"])
def test_padded_batch_prefill_matches_the_oracle_row_by_row(vvm, template):
    from model.generate import layout_padded, prefill, start_cache
    from model.video import preprocess_video

    videos = [random_video(5, 60, 90, 1), random_video(2, 120, 70, 2)]
    prompts = [vvm.build_prompt(CAPTION_PROMPT, template), vvm.build_prompt("What happens?", template)]
    model, tok = vvm.model, vvm.tokenizer
    features = model.encode_videos([torch.from_numpy(preprocess_video(v.frames)) for v in videos])
    time_ids = [tok.encode(str(t), add_special_tokens=False) for t in range(5)] if template == "chat" else None
    rows = [
        build_video_input_ids(tok.encode(p, add_special_tokens=False), len(v.frames), vvm.config, time_ids)
        for v, p in zip(videos, prompts)
    ]
    batch = layout_padded(model, rows, [0, 1])
    cache, valid = start_cache(model, batch, 1)
    batched = prefill(model, features, batch, cache, valid)
    for row, (video, prompt) in enumerate(zip(videos, prompts)):
        torch.testing.assert_close(batched[row], oracle_logits(vvm, video, prompt, template), atol=1e-4, rtol=1e-4)


def test_each_video_encoded_once_and_rows_independent_of_their_batch(vvm):
    videos = [random_video(4, 48, 64, 3), random_video(1, 64, 48, 4), random_video(7, 30, 30, 5)]
    prompts = [vvm.build_prompt(q, "chat") for q in (CAPTION_PROMPT, "Who?", "Where?", "When?")]
    index = [2, 0, 2, 1]  # video 2 is asked twice
    settings = GenerationSettings(max_new_tokens=12)
    frames_seen = []
    hook = vvm.model.model.vision.register_forward_hook(lambda m, args, out: frames_seen.append(len(args[0])))
    try:
        together = vvm.generate_videos(videos, prompts, index, template="chat", settings=settings)
    finally:
        hook.remove()
    assert frames_seen == [7 + 4 + 1]  # one ViT batch: every used video's frames, each video once
    alone = [vvm.generate_videos([videos[v]], [p], template="chat", settings=settings)[0] for p, v in zip(prompts, index)]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    assert any(g.token_ids for g in together)


def test_video_generation_stops_at_the_single_config_eos(vvm, monkeypatch):
    """spec: the video checkpoints stop at eos_token_id alone (128001; the image model's second id,
    128009 / eot, is not a stop). The tiny checkpoint mirrors them: eos 257, eot 259."""
    assert vvm.config.eos_token_ids == (257,)
    logits = vvm.model.logits
    video, prompt, settings = random_video(2, 40, 40, 6), vvm.build_prompt("Hi", "chat"), GenerationSettings(max_new_tokens=3)
    for favoured, expected in [(257, ([], "eos")), (259, ([259, 259, 259], "length"))]:
        monkeypatch.setattr(vvm.model, "logits", lambda h, t=favoured: logits(h).index_add(-1, torch.tensor([t]), torch.full((h.shape[0], 1), 1e4)))
        [out] = vvm.generate_videos([video], [prompt], template="chat", settings=settings)
        assert (out.token_ids, out.finish_reason) == expected


def test_generate_videos_refuses_bad_input(vvm, video_dir):
    with pytest.raises(ValueError, match="video_index"):
        vvm.generate_videos([random_video(1, 30, 30, 0)], ["a", "b"], [0, 1])
    with pytest.raises(ValueError, match=r"\[T, 3, 224, 224\]"):
        vvm.generate_videos([np.zeros((2, 3, 56, 56), np.float32)], ["a"])


def test_generate_takes_videos_for_a_video_checkpoint(vvm):
    video = random_video(3, 40, 60, 7)
    prompt = vvm.build_prompt("What is it?")  # the checkpoint's template (base, as the caption model's)
    settings = GenerationSettings(max_new_tokens=6)
    assert vvm.template_version == "base"
    assert vvm.generate([video], [prompt], settings=settings) == vvm.generate_videos([video], [prompt], template="base", settings=settings)


def test_the_caption_tools_2048_new_tokens_fit_after_24_frames(vvm):
    """spec: max_position_embeddings 2048 is not enforced; 24 chat frames put the text at 97."""
    from model.generate import layout_padded, start_cache

    time_ids = [vvm.tokenizer.encode(str(t), add_special_tokens=False) for t in range(24)]
    text = vvm.tokenizer.encode(vvm.build_prompt(CAPTION_PROMPT, "chat"), add_special_tokens=False)
    batch = layout_padded(vvm.model, [build_video_input_ids(text, 24, vvm.config, time_ids)], [0])
    assert int(batch.positions[0, -1]) + 2048 >= vvm.config.max_position_embeddings
    start_cache(vvm.model, batch, 2048)  # no "reaches position" error
    assert vvm.model.rope_cos.shape[0] > int(batch.positions[0, -1]) + 2048
