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

from model_worker.__main__ import main
from model_worker.model.preprocess import decode_image, preprocess_images
from model_worker.model.prompt import build_prompt, tokenize_prompt
from model_worker.wire.protocol import Turn


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


def test_generate_json_multi_turn_multi_image(tiny_weights, images, tmp_path, loaded):
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
    turns = [Turn(role=t["role"], text=t["text"]) for t in conversation]
    text_only = tokenize_prompt(build_prompt(turns), loaded.tokenizer, num_queries=4).length
    with_markup = [Turn(role="user", text="<Img></Img> <Img></Img> " + turns[0].text), turns[1],
                   Turn(role="user", text="<Img></Img> " + turns[2].text)]
    markup = tokenize_prompt(build_prompt(with_markup), loaded.tokenizer, num_queries=4).length
    assert out["prompt_tokens"] > text_only and out["prompt_tokens"] >= markup - 3 + 3 * 4  # 3 images x 4 rows


def test_generate_reports_bad_input_cleanly(tiny_weights, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["generate", "--weights", str(tiny_weights), "--image", str(bad), "--prompt", "hi", "--json"]) == 2
    assert "error (bad_image): image 1 could not be decoded" in capsys.readouterr().err
    assert main(["generate", "--weights", str(tmp_path / "nowhere"), "--prompt", "hi"]) == 1
    assert "does not exist" in capsys.readouterr().err
    conversation = tmp_path / "c.json"
    conversation.write_text('[{"role": "assistant", "text": "hi"}]')
    assert main(["generate", "--weights", str(tiny_weights), "--conversation", str(conversation)]) == 2
    assert "must end with a user turn" in capsys.readouterr().err


def test_embed_writes_projected_rows(tiny_weights, images, tmp_path, loaded):
    out = tmp_path / "emb.npy"
    assert main(["embed", "--weights", str(tiny_weights), "--image", str(images[1]), "--out", str(out)]) == 0
    array = np.load(out)
    assert array.shape == (4, 64) and array.dtype == np.float32
    pixels = preprocess_images([decode_image(images[1].read_bytes())])
    with torch.inference_mode():
        expected = loaded.model.encode_images(pixels)[0].numpy()
    np.testing.assert_allclose(array, expected, rtol=1e-6, atol=1e-6)


def test_make_tiny_command(tmp_path):
    assert main(["make-tiny", "--out", str(tmp_path / "w"), "--seed", "2"]) == 0
    names = {p.relative_to(tmp_path / "w").as_posix() for p in (tmp_path / "w").rglob("*") if p.is_file()}
    assert names == {"eva_vit_g.pth", "blip2_pretrained_flant5xxl.pth", "checkpoint.pth", "arch.json",
                     "gpt-neox/config.json", "gpt-neox/model.safetensors", "gpt-neox/spiece.model",
                     "gpt-neox/tokenizer_config.json"}
