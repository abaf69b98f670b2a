"""The contract every registered domain keeps, checked on its own tiny sample data.

Parametrised over `maekit.domains.registry.domains()`: a domain gets every test here by
registering (with an `example`); see README "Adding a domain". `tests/example_domain.py`
registers a 1-D signal domain from the tests themselves, to show that nothing else is needed.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from maekit.domains.registry import Example, domains, get_domain
from maekit.pretrain import MAEPretrainModule, RandomMasking
from maekit.tokens import DomainAdapter

from . import example_domain  # noqa: F401  (registers the "signal" domain)

DOMAINS = sorted(domains())
WIDTH = 32


@pytest.fixture(scope="module", params=DOMAINS)
def example(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Example:
    found = get_domain(request.param).make_example(tmp_path_factory.mktemp(request.param))
    found.datamodule.setup("fit")
    return found


def train_batch(ex: Example) -> dict[str, Any]:
    dm = ex.datamodule
    loader = DataLoader(dm.datasets["train"], batch_size=2, shuffle=False, collate_fn=dm.collate_fn)
    return next(iter(loader))


def built(ex: Example) -> DomainAdapter:
    """A fresh copy of the example's adapter, built for WIDTH."""
    adapter = copy.deepcopy(ex.adapter)
    adapter.build(WIDTH)
    return adapter


def test_registered_with_everything_the_kit_uses(example: Example) -> None:
    assert isinstance(example.adapter, DomainAdapter)
    assert isinstance(example.datamodule, L.LightningDataModule)
    assert len(example.datamodule.datasets["train"]) >= 2 and len(example.datamodule.datasets["val"]) >= 1


def test_tokenize_untokenize_round_trip(example: Example) -> None:
    adapter = built(example)
    batch = train_batch(example)
    tokens = adapter.tokenize(batch)
    b, n, p = tokens.values.shape
    assert tokens.coords.shape[:2] == (b, n) and tokens.group.shape == (b, n) and tokens.present.shape == (b, n)
    assert tokens.present.dtype == torch.bool and bool(tokens.present.any())
    native = adapter.untokenize(tokens.values, tokens)
    expected = example.native(adapter, batch).to(native.dtype)
    assert native.shape == expected.shape
    # where the data is present (untokenize of the present flags marks it in the native layout)
    where = adapter.untokenize(tokens.present[..., None].expand(-1, -1, p).to(native.dtype), tokens) > 0.5
    assert bool(where.any())
    torch.testing.assert_close(native[where], expected[where], rtol=1e-5, atol=1e-5)
    # and the inverse is not the identity by accident: other values give another native array
    other = adapter.untokenize(tokens.values + 1.0, tokens)
    assert not torch.allclose(other[where], native[where])


def test_loss_is_per_token_and_finite(example: Example) -> None:
    adapter = built(example)
    tokens = adapter.tokenize(train_batch(example))
    target = adapter.target(tokens)
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    pred = target + torch.randn(target.shape, generator=generator)
    loss = adapter.loss(pred, target, tokens)
    assert loss.shape == tokens.present.shape and loss.dtype == torch.float32
    assert bool(torch.isfinite(loss[tokens.present]).all())
    assert float(loss[tokens.present].mean()) > float(adapter.loss(target, target, tokens)[tokens.present].mean())


def test_absent_tokens_are_never_visible(example: Example) -> None:
    adapter = built(example)
    tokens = adapter.tokenize(train_batch(example))
    seed = int(torch.randint(0, 2**31, ()))
    generator = torch.Generator().manual_seed(seed)
    drop = torch.rand(tokens.present.shape, generator=generator) < 0.5
    drop[:, 0] = False  # every sample keeps something
    tokens.present = tokens.present & ~drop
    tokens.may_be_absent = True
    torch.manual_seed(seed)
    visible = RandomMasking(0.5)(tokens)
    shown = torch.gather(tokens.present, 1, visible.index)
    if visible.valid is not None:
        shown = shown | ~visible.valid
    assert bool(shown.all()), "an absent token was made visible"
    assert bool((visible.mask & ~tokens.present).sum() == 0)


def test_config_rebuilds_an_equal_adapter(example: Example) -> None:
    adapter = built(example)
    config = adapter.config()
    module, _, name = config["class_path"].rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**config["init_args"])
    assert type(rebuilt) is type(adapter) and rebuilt.config() == config
    rebuilt.build(WIDTH)
    rebuilt.load_state_dict(adapter.state_dict())
    tokens = adapter.tokenize(train_batch(example))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.embed(tokens), adapter.embed(tokens))


def test_sample_data_trains_one_step(example: Example, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MAEPretrainModule(copy.deepcopy(example.adapter), size="nano", decoder_width=16, decoder_depth=1,
                               decoder_heads=2, figure_every_n_epochs=0, warmup_epochs=0)
    before = {k: v.clone() for k, v in module.mae.encoder.state_dict().items()}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=example.datamodule)
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"]).all()
    after = module.mae.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "one step changed no encoder weight"


def test_shards_stream_the_validation_split_back(example: Example, tmp_path: Path) -> None:
    pytest.importorskip("litdata")
    from maekit.data.shards import write_shards
    from maekit.data.streaming import StreamingShardsDataModule

    dm = example.datamodule
    out = write_shards(dm, tmp_path / "shards", splits=["train", "val"])
    stream = StreamingShardsDataModule(str(out), augment=False, shuffle=False).dataset("val")
    source = dm.datasets["val"]
    assert len(stream) == len(source)
    for index in range(len(source)):
        want, got = source[index], stream[index]
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(got[key], value, msg=f"{key} of val sample {index}")
            else:
                assert got[key] == value, key
