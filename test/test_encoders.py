"""Image encoders: folded normalisation is exact; the seed's pretrained ResNet-10
(helper2424/resnet10) loads from its upstream layout and computes what its model card's
architecture computes; missing or mismatching weights are one-line errors."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from hilserl.learning.encoders import (ImageNormalizer, ResNet10, SmallConv,
                                       load_pretrained_encoder, network_input)
from hilserl.configuration.pretrained import PretrainedWeightsMissing, resolve_pretrained_dir

WIDTHS = (64, 128, 256, 512)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def test_small_conv_folds_the_normalisation_exactly():
    torch.manual_seed(0)
    net = SmallConv()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    folded = net(network_input(net, ImageNormalizer(), images))
    normalized = ImageNormalizer()(images)
    reference = net.net(F.conv2d(normalized, net.stem.weight, net.stem.bias, stride=4))
    torch.testing.assert_close(folded, reference, rtol=1e-4, atol=1e-4)


# --- the upstream layout, written from its description (not from hilserl.learning.encoders) ---

def upstream_weights(seed=0):
    """Random tensors under the names helper2424/resnet10 saves (36 of them)."""
    g = torch.Generator().manual_seed(seed)

    def conv(cout, cin, k):
        return torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (cin * k * k))

    def norm(prefix, c):
        return {f'{prefix}.group_norm.weight': 1 + 0.2 * torch.randn(c, generator=g),
                f'{prefix}.group_norm.bias': 0.2 * torch.randn(c, generator=g)}

    w = {'embedder.0.weight': conv(64, 3, 7), **norm('embedder.1', 64)}
    cin = 64
    for n, width in enumerate(WIDTHS):
        p = f'encoder.stages.{n}'
        w[f'{p}.conv1.conv.weight'] = conv(width, cin, 3)
        w.update(norm(f'{p}.norm1', width))
        w[f'{p}.conv2.conv.weight'] = conv(width, width, 3)
        w.update(norm(f'{p}.norm2', width))
        if cin != width:
            w[f'{p}.shortcut.0.conv.weight'] = conv(width, cin, 1)
            w.update(norm(f'{p}.shortcut.1', width))
        cin = width
    return w


def write_upstream(directory, weights):
    from safetensors.torch import save_file
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / 'model.safetensors'))
    (directory / 'config.json').write_text(json.dumps({
        'model_type': 'resnet10', 'num_channels': 3, 'embedding_size': 64,
        'hidden_sizes': list(WIDTHS), 'depths': [1, 1, 1, 1], 'hidden_act': 'relu',
        'pooler': None, '_name_or_path': 'helper2424/resnet10'}))
    return directory


def same(x, k, s, value=0.0):
    """TF "SAME" padding: total = max(0, (ceil(n / s) - 1) * s + k - n), the odd one after."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max(0, (math.ceil(n / s) - 1) * s + k - n)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def reference_features(w, images):
    """uint8 images -> the last feature map, functionally, from the architecture's description."""
    def gn(x, prefix):
        return F.group_norm(x, 4, w[f'{prefix}.group_norm.weight'],
                            w[f'{prefix}.group_norm.bias'], eps=1e-5)

    def conv(x, key, stride):
        weight = w[key]
        return F.conv2d(same(x, weight.shape[-1], stride), weight, stride=stride)

    dtype = w['embedder.0.weight'].dtype
    x = (images.to(dtype) / 255.0 - MEAN.to(dtype)) / STD.to(dtype)
    x = F.relu(gn(F.conv2d(x, w['embedder.0.weight'], stride=2, padding=3), 'embedder.1'))
    x = F.max_pool2d(same(x, 3, 2, value=float('-inf')), 3, 2)
    cin = 64
    for n, width in enumerate(WIDTHS):
        p, stride = f'encoder.stages.{n}', 1 if n == 0 else 2
        out = F.relu(gn(conv(x, f'{p}.conv1.conv.weight', stride), f'{p}.norm1'))
        out = gn(conv(out, f'{p}.conv2.conv.weight', 1), f'{p}.norm2')
        shortcut = (gn(conv(x, f'{p}.shortcut.0.conv.weight', stride), f'{p}.shortcut.1')
                    if cin != width else x)
        x = F.relu(out + shortcut)
        cin = width
    return x


@pytest.mark.parametrize('hw', [(128, 128), (97, 70)])
def test_resnet10_computes_the_upstream_features(tmp_path, hw):
    weights = upstream_weights()
    assert len(weights) == 36
    directory = write_upstream(tmp_path / 'resnet10', weights)
    net = ResNet10()
    assert 'helper2424/resnet10' in load_pretrained_encoder(net, directory)
    assert set(net.state_dict()) == set(weights)
    images = torch.randint(0, 256, (3, 3, *hw), dtype=torch.uint8)
    with torch.no_grad():
        expected = reference_features(weights, images)
        net.eval()
        got = net(network_input(net, ImageNormalizer(), images))  # channels_last input
        net.to(memory_format=torch.channels_last)  # as the policy runs it
        got_cl = net(network_input(net, ImageNormalizer(), images))
    if hw == (128, 128):
        assert expected.shape == (3, 512, 4, 4)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_cl, expected, rtol=1e-5, atol=1e-5)
    # in float64 the two agree to rounding: the same computation, not just a close one
    with torch.no_grad():
        expected64 = reference_features({k: v.double() for k, v in weights.items()}, images)
        got64 = net.double()((images.double() / 255.0 - MEAN.double()) / STD.double())
    torch.testing.assert_close(got64, expected64, rtol=1e-12, atol=1e-12)


def test_the_policy_and_the_classifier_use_those_features(tmp_path):
    from hilserl_policy.networks import Backbone
    from reward_classifier_node.model import ClassifierConfig, RewardClassifier
    weights = upstream_weights(seed=1)
    directory = str(write_upstream(tmp_path / 'resnet10', weights))
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        expected = reference_features(weights, images)
        backbone = Backbone('resnet10', (128, 128), frozen=True, pretrained_path=directory)
        assert backbone.fmap_shape == (512, 4, 4)
        torch.testing.assert_close(backbone(images)[:, 0], expected, rtol=1e-5, atol=1e-5)
        classifier = RewardClassifier(ClassifierConfig(encoder='resnet10', freeze_encoder=True,
                                                       pretrained_encoder_path=directory))
        classifier.eval()
        got = classifier.encoder(network_input(classifier.encoder, classifier.normalize, images))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_repo_id_loads_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    repo = tmp_path / 'hf' / 'hub' / 'models--helper2424--resnet10'
    write_upstream(repo / 'snapshots' / 'abc123', upstream_weights())
    write_upstream(repo / 'snapshots' / 'old000', upstream_weights(seed=5))
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text('abc123')
    for name in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
    assert resolve_pretrained_dir('helper2424/resnet10') == repo / 'snapshots' / 'abc123'
    net = ResNet10()
    load_pretrained_encoder(net, 'helper2424/resnet10')
    assert torch.equal(net.state_dict()['embedder.0.weight'],
                       upstream_weights()['embedder.0.weight'])


def test_missing_weights_are_one_line_errors_that_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'empty'))
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'empty' / 'hub'))
    for path in ('helper2424/resnet10', str(tmp_path / 'nowhere'), str(tmp_path)):
        with pytest.raises(PretrainedWeightsMissing) as info:
            load_pretrained_encoder(ResNet10(), path)
        message = str(info.value)
        assert '\n' not in message and 'hilserl fetch-encoder helper2424/resnet10' in message


def test_weights_of_another_layout_are_refused(tmp_path):
    from safetensors.torch import save_file
    old = ResNet10().state_dict()  # a BatchNorm ResNet (Hugging Face ResNetModel) is not it
    (tmp_path / 'a').mkdir()
    save_file({'embedder.embedder.convolution.weight': old['embedder.0.weight']},
              str(tmp_path / 'a' / 'model.safetensors'))
    with pytest.raises(ValueError, match='36 encoder tensors missing'):
        load_pretrained_encoder(ResNet10(), tmp_path / 'a')
    write_upstream(tmp_path / 'b', upstream_weights())
    (tmp_path / 'b' / 'config.json').write_text(json.dumps({'model_type': 'resnet'}))
    with pytest.raises(ValueError, match="model_type 'resnet'"):
        load_pretrained_encoder(ResNet10(), tmp_path / 'b')


def test_a_frozen_encoder_without_weights_is_refused():
    from hilserl.configuration.config import ConfigError, PolicyConfig
    from hilserl_policy.networks import Backbone
    from reward_classifier_node.model import ClassifierConfig
    for make in (lambda: PolicyConfig(pretrained_encoder_path=None),
                 lambda: PolicyConfig(encoder='small_conv', pretrained_encoder_path=''),
                 lambda: Backbone('resnet10', (64, 64), frozen=True),
                 lambda: ClassifierConfig(encoder='resnet10', freeze_encoder=True)):
        with pytest.raises(ValueError) as info:
            make()
        message = str(info.value)
        assert '\n' not in message
        assert 'pretrained_encoder_path' in message and 'freeze_encoder: false' in message
    with pytest.raises(ConfigError, match='null'):  # the ResNet-10 default for another encoder
        PolicyConfig(encoder='small_conv', freeze_encoder=False)
    assert PolicyConfig(freeze_encoder=False, pretrained_encoder_path=None).encoder == 'resnet10'
