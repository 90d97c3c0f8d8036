from __future__ import annotations

import pytest
import torch

from labelloop.errors import ConfigError
from labelloop.training.classification.mixing import mix_batch
from labelloop.training.classification.recipe import ClassificationRecipe


def _batch(n: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i in every pixel and channel, and its label is i, so a
    mixed image says which images it came from and in what share."""
    y = torch.arange(n)
    return y.float().view(n, 1, 1, 1).expand(n, 3, size, size).clone(), y


def test_without_an_alpha_the_batch_is_untouched():
    x, y = _batch()
    mixed = mix_batch(x, y, None, None)
    assert mixed.lam == 1.0 and mixed.x is x
    assert torch.equal(mixed.y_a, y) and torch.equal(mixed.y_b, y)
    one = mix_batch(x[:1], y[:1], 1.0, 1.0)  # nothing to mix a single image with
    assert one.lam == 1.0 and torch.equal(one.x, x[:1])


def test_mixup_blends_each_image_with_the_one_its_second_label_names():
    torch.manual_seed(0)
    x, y = _batch()
    mixed = mix_batch(x, y, 0.4, None)
    assert 0.0 <= mixed.lam <= 1.0 and mixed.lam not in (0.0, 1.0)
    assert torch.equal(mixed.y_a, y)
    assert sorted(mixed.y_b.tolist()) == y.tolist()  # a permutation of the batch
    want = mixed.lam * y.float() + (1 - mixed.lam) * mixed.y_b.float()
    assert torch.allclose(mixed.x, want.view(-1, 1, 1, 1).expand_as(x))


def test_cutmix_pastes_one_box_whose_area_sets_the_loss_share():
    torch.manual_seed(3)
    x, y = _batch(n=16, size=32)
    for _ in range(20):
        mixed = mix_batch(x, y, None, 1.0)
        assert torch.equal(mixed.y_a, y)
        for i in range(len(y)):
            own = mixed.x[i] == float(y[i])
            other = mixed.x[i] == float(mixed.y_b[i])
            assert bool((own | other).all())  # every pixel is one of the two images
            if mixed.y_b[i] != y[i]:
                assert float(own.float().mean()) == pytest.approx(mixed.lam)
                # the pasted part is one axis-aligned box in every channel
                rows, cols = torch.nonzero(other[0], as_tuple=True)
                if len(rows):
                    box = other[0][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
                    assert bool(box.all()) and int(box.sum()) == int(other[0].sum())
                    assert torch.equal(other[0], other[1])


def test_with_both_alphas_each_batch_takes_one_method():
    torch.manual_seed(1)
    x, y = _batch()
    seen = set()
    for _ in range(40):
        mixed = mix_batch(x, y, 0.4, 1.0)
        blended = bool((mixed.x != mixed.x.round()).any())  # mixup leaves fractions
        seen.add("mixup" if blended else "cutmix")
    assert seen == {"mixup", "cutmix"}


def test_recipe_fields_are_checked_and_keep_old_run_hashes():
    plain = ClassificationRecipe()
    assert "mixup_alpha" not in plain.canonical_json()
    assert "cutmix_alpha" not in plain.canonical_json()
    mixed = ClassificationRecipe(mixup_alpha=0.2)
    assert mixed.recipe_hash() != plain.recipe_hash()
    for bad in ({"mixup_alpha": 0}, {"cutmix_alpha": -1.0}, {"mixup_alpha": "lots"}):
        with pytest.raises((ConfigError, ValueError)):
            ClassificationRecipe.from_dict({"task": "classification", **bad})
