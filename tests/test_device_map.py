"""Loading through accelerate's device_map (a model larger than one device): on this CPU-only machine
"auto" places every layer on the CPU, so this checks the accelerate path (its dispatch hooks around each
module) keeps the head interface and the final-token path exact. Spreading over several GPUs is the same
code with layers on different devices (cached keys/values stay on their layer's device)."""

import torch

import iclscope
from iclscope.models.hf import plain_copy


def test_device_map_auto_keeps_hooks_and_the_final_token_path(tmp_path):
    src = iclscope.load("random:llama:layers=2,heads=4,d_model=32,tokenizer=byte")
    plain_copy(src).save_pretrained(tmp_path / "m")
    model = iclscope.load(str(tmp_path / "m"), device_map="auto")
    tokens = torch.randint(0, 257, (3, 9), generator=torch.Generator().manual_seed(0))
    full, cache = model.run(tokens, record=["z"])
    ref = src.run(tokens)[0]
    torch.testing.assert_close(full, ref, rtol=1e-4, atol=1e-5)
    assert cache["blocks.1.attn.hook_z"].shape == (3, 9, 4, 8)
    prefix = model.prefix_cache(tokens)
    last = model.run_last_token(prefix)[0][:, -1]
    torch.testing.assert_close(last, full[:, -1], rtol=1e-4, atol=1e-5)
