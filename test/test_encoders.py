"""Image encoders: folded normalisation is exact, pretrained ResNet-10 weights load from a local
HF-style directory, and a mismatching directory is refused clearly."""
import json

import pytest
import torch
import torch.nn.functional as F

from hilserl.encoders import (ImageNormalizer, ResNet10, SmallConv, load_pretrained_encoder,
                              network_input)


def test_small_conv_folds_the_normalisation_exactly():
    torch.manual_seed(0)
    net = SmallConv()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    folded = net(network_input(net, ImageNormalizer(), images))
    normalized = ImageNormalizer()(images)
    reference = net.net(F.conv2d(normalized, net.stem.weight, net.stem.bias, stride=4))
    torch.testing.assert_close(folded, reference, rtol=1e-4, atol=1e-4)


def test_resnet10_loads_local_pretrained_weights(tmp_path):
    from safetensors.torch import save_file
    source = ResNet10()
    save_file({'resnet.' + k: v.contiguous() for k, v in source.state_dict().items()},
              str(tmp_path / 'model.safetensors'))
    (tmp_path / 'config.json').write_text(json.dumps({'_name_or_path': 'local/resnet10'}))
    target = ResNet10()
    report = load_pretrained_encoder(target, tmp_path)
    assert 'local/resnet10' in report
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k


def test_pretrained_loading_refuses_missing_or_wrong_weights(tmp_path):
    from safetensors.torch import save_file
    with pytest.raises(FileNotFoundError, match='model.safetensors'):
        load_pretrained_encoder(ResNet10(), tmp_path)
    save_file({'unrelated.weight': torch.zeros(3)}, str(tmp_path / 'model.safetensors'))
    with pytest.raises(ValueError, match='missing'):
        load_pretrained_encoder(ResNet10(), tmp_path)
