"""Run by tests/training/test_fsdp.py under a 2-process launcher (or plainly, with `plain`): SETR's optimizer groups (built
by parameter name: head multiplier, layer decay, no decay) through Accelerate's FSDP2 preparation on gloo CPU
processes. accelerate 1.15 forms no FSDP state on the CPU, so `Accelerator._prepare_fsdp2` (what `prepare` calls
for FSDP2) is called with the plugin set by hand; `fully_shard` itself runs on the CPU in torch 2.14."""

import json
import sys

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

from transformers_setr import SetrConfig, SetrForSemanticSegmentation
from transformers_setr.training.recipe import build_optimizer


def groups(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [
        [group["name"], group["lr"], group["weight_decay"], sorted(names[id(p)] for p in group["params"])]
        for group in optimizer.param_groups
    ]


def main(output: str, plain: bool) -> None:
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    config = SetrConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
        out_indices=[0, 1, 2, 3], decoder_channels=16, auxiliary_channels=8, num_labels=3,
    )  # fmt: skip
    model = SetrForSemanticSegmentation(config)
    optimizer = build_optimizer(model, "adamw_torch", 0.01, weight_decay=0.05, layer_decay=0.9)
    before = groups(model, optimizer)
    if not plain:
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["SetrLayer"]
        )
        model, optimizer = accelerator._prepare_fsdp2(model, optimizer)
    pixel_values, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))  # the same on every rank
    losses = []
    for _ in range(3):
        loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    record = {
        "world_size": accelerator.num_processes,
        "before": before,
        "after": groups(model, optimizer),
        "sharded": all(isinstance(parameter, DTensor) for parameter in model.parameters()),
        "losses": losses,
    }
    with open(f"{output}/groups_{'plain' if plain else accelerator.process_index}.json", "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    main(sys.argv[1], plain=sys.argv[2:] == ["plain"])
