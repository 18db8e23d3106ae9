import pytest
import torch

from medssl.transforms.augment import AugmentConfig, ViewAugment, light_augment


@pytest.mark.parametrize("spatial_dims,channels", [(2, 1), (2, 3), (3, 1)])
def test_views_keep_shape_and_range_and_differ_per_sample(spatial_dims, channels):
    x = torch.rand(6, channels, *([16] * spatial_dims))
    view = ViewAugment(spatial_dims, 16)(x)
    assert view.shape == x.shape and view.dtype == torch.float32
    assert view.min() >= 0 and view.max() <= 1
    assert not torch.allclose(view, x)
    assert not torch.allclose(view[0], view[1])  # per-sample parameters


def test_same_seed_same_views():
    x = torch.rand(4, 1, 16, 16)
    aug = ViewAugment(2, 16)
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    assert torch.equal(a, aug(x))
    assert not torch.equal(a, aug(x))


def test_identity_config_changes_nothing_but_the_crop():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), hflip=0, rotation=0, blur_p=0, noise_p=0,
                        p_intensity=0)
    x = torch.rand(3, 1, 16, 16)
    torch.manual_seed(0)
    assert torch.allclose(ViewAugment(2, 16, cfg)(x), x, atol=1e-5)


def test_light_augment_is_milder_than_the_ssl_views():
    x = torch.rand(64, 1, 16, 16)
    strong = (ViewAugment(2, 16)(x) - x).abs().mean()
    mild = (light_augment(2, 16)(x) - x).abs().mean()
    assert mild < strong
