"""The command line on tiny weights, as a user runs it: generate --json, embed, make-tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from model_worker.model.preprocess import decode_image, preprocess_images


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "model_worker", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, color in enumerate([(220, 40, 30), (20, 200, 60), (30, 40, 210)]):
        path = folder / f"img{index}.png"
        Image.new("RGB", (160 + 40 * index, 120), color).save(path)
        paths.append(path)
    return paths


def test_generate_json_one_image(tiny_weights, images):
    result = cli("generate", "--weights", str(tiny_weights), "--image", str(images[0]), "--prompt",
                 "What can you see?", "--greedy", "--max-new-tokens", "12", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert isinstance(out["text"], str) and out["text"] == out["text"].strip()
    assert 0 < len(out["token_ids"]) <= 12 and 3 not in out["token_ids"]
    # prompt: "ユーザー: <Img>" + 4 image rows + "</Img> What can you see?\nシステム: "
    assert out["prompt_tokens"] > 4 and out["finish_reason"] in ("stop", "length")
    assert {"load_s", "prefill_s", "decode_s", "total_s"} <= set(out["timings"])
    again = json.loads(cli("generate", "--weights", str(tiny_weights), "--image", str(images[0]), "--prompt",
                           "What can you see?", "--greedy", "--max-new-tokens", "12", "--device", "cpu",
                           "--json").stdout)
    assert again["token_ids"] == out["token_ids"] and again["text"] == out["text"]


def test_generate_json_multi_turn_multi_image(tiny_weights, images, tmp_path):
    conversation = [
        {"role": "user", "text": "What can you see?", "images": [str(images[0]), str(images[1])]},
        {"role": "assistant", "text": "a cat on a table with a laptop"},
        {"role": "user", "text": "猫はどんな体勢をしていますか?", "images": [images[2].name]},
    ]
    (tmp_path / images[2].name).write_bytes(images[2].read_bytes())  # relative to the file's folder
    path = tmp_path / "conversation.json"
    path.write_text(json.dumps(conversation, ensure_ascii=False), encoding="utf-8")
    result = cli("generate", "--weights", str(tiny_weights), "--conversation", str(path), "--seed", "5",
                 "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--max-new-tokens", "10", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["token_ids"]) <= 10 and out["seed"] == 5
    single = json.loads(cli("generate", "--weights", str(tiny_weights), "--prompt", "x", "--max-new-tokens", "1",
                            "--json").stdout)
    assert out["prompt_tokens"] > single["prompt_tokens"] + 3 * 4  # three images of 4 query rows each


def test_generate_reports_bad_input_without_traceback(tiny_weights, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = cli("generate", "--weights", str(tiny_weights), "--image", str(bad), "--prompt", "hi", "--json")
    assert result.returncode == 2 and "bad_image" in result.stderr and "Traceback" not in result.stderr
    result = cli("generate", "--weights", str(tmp_path / "nowhere"), "--prompt", "hi")
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_embed_writes_projected_rows(tiny_weights, images, tmp_path, loaded):
    out = tmp_path / "emb.npy"
    result = cli("embed", "--weights", str(tiny_weights), "--image", str(images[1]), "--out", str(out))
    assert result.returncode == 0, result.stderr
    array = np.load(out)
    assert array.shape == (4, 64) and array.dtype == np.float32
    pixels = preprocess_images([decode_image(images[1].read_bytes())])
    with torch.inference_mode():
        expected = loaded.model.encode_images(pixels)[0].numpy()
    np.testing.assert_allclose(array, expected, rtol=1e-6, atol=1e-6)


def test_make_tiny_command(tmp_path):
    result = cli("make-tiny", "--out", str(tmp_path / "w"), "--seed", "2")
    assert result.returncode == 0, result.stderr
    names = {p.relative_to(tmp_path / "w").as_posix() for p in (tmp_path / "w").rglob("*") if p.is_file()}
    assert names == {"eva_vit_g.pth", "blip2_pretrained_flant5xxl.pth", "checkpoint.pth", "arch.json",
                     "gpt-neox/config.json", "gpt-neox/model.safetensors", "gpt-neox/spiece.model",
                     "gpt-neox/tokenizer_config.json"}
