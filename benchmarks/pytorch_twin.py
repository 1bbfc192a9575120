"""A plain PyTorch twin of U-HVED, for a same-machine speed comparison.

An independent, straightforward eager PyTorch implementation of the same network as
``uhved_tf.model.uhved.UHVED`` (same layer widths, so the same parameter count and the same
convolution FLOPs), trained on one constant random batch. It is run in its own process by the
performance benchmark so that "ours vs a PyTorch implementation" is a ratio measured on one
machine in one run. It imports only torch, numpy and the standard library (no TensorFlow).

Network (widths for base width b, L levels; layout NCDHW):

* one encoder per modality: Conv3d(1 -> b, 1x1x1) + leaky ReLU(0.02), then L blocks of widths
  b*2^k with MaxPool3d(2) between them; a block is two [instance norm -> leaky ReLU -> 3x3x3
  conv] units. Each block's output is one scale: first half of the channels = mean, second half
  = log-variance (clipped to [-50, 50]).
* per scale, product of the available modalities' Gaussians with the N(0, 1) prior, and a
  reparameterised sample z.
* five U-Net decoders (4 images + the segmentation): from z_{L-1}, per level k = L-2..0:
  trilinear x2 upsampling, concatenation with z_k, a block of widths (b*2^k, b*2^k/2); then a
  1x1x1 head.
* loss = Dice + CE + 0.1 MSE(reconstructions) + 0.1 KL + 1e-5 * sum(w^2) / 2 over the conv
  kernels; Adam, learning rate 1e-3.

Usage::

    python benchmarks/pytorch_twin.py --size 64 --steps 10 [--base-width 8] [--threads N]
        [--memory-format channels_last_3d|contiguous]

Plain eager PyTorch with the default backends (no torch.compile). Tensors and weights are in the
channels_last_3d memory format by default: measured about 2x faster forward + backward than
contiguous NCDHW for the full-resolution convs at 64^3 on the 2-core dev CPU, and no slower for
the rest.

Prints one JSON line at the end (times in seconds, peak RSS = VmHWM in bytes, conv GFLOP of one
training step counted analytically: forward 2*kd*kh*kw*Cin*Cout*D*H*W per conv, backward twice
that, except the encoders' first convs, which see the image and need no input gradient).
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

_IMPORT_S = time.perf_counter() - _T0

SLOPE = 0.02
LOGVAR_CLIP = 50.0
LOSS_WEIGHTS = {"dice": 1.0, "ce": 1.0, "recon": 0.1, "kl": 0.1}
WEIGHT_DECAY = 1e-5
LEARNING_RATE = 1e-3


def _conv(cin, cout, k):
    conv = nn.Conv3d(cin, cout, k, padding=k // 2, bias=True)
    # He normal (std sqrt(2 / fan_in)) and zero bias, as the Keras model (whose he_normal is
    # truncated at 2 std; torch's trunc_normal_ is a rejection loop, slow for no benefit here).
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return conv


class ConvBlock(nn.Module):
    """Two [instance norm -> leaky ReLU -> 3x3x3 conv] units."""

    def __init__(self, cin, widths):
        super().__init__()
        self.norms = nn.ModuleList()
        self.convs = nn.ModuleList()
        for w in widths:
            self.norms.append(nn.InstanceNorm3d(cin, eps=1e-5, affine=True))
            self.convs.append(_conv(cin, w, 3))
            cin = w

    def forward(self, x):
        for norm, conv in zip(self.norms, self.convs):
            x = conv(F.leaky_relu(norm(x), SLOPE))
        return x


class Encoder(nn.Module):
    def __init__(self, b, levels):
        super().__init__()
        self.stem = _conv(1, b, 1)
        self.blocks = nn.ModuleList()
        cin = b
        for k in range(levels):
            self.blocks.append(ConvBlock(cin, (b * 2**k,) * 2))
            cin = b * 2**k

    def forward(self, x):
        x = F.leaky_relu(self.stem(x), SLOPE)
        scales = []
        for k, block in enumerate(self.blocks):
            if k > 0:
                x = F.max_pool3d(x, 2)
            x = block(x)
            scales.append(x)
        return scales


class Decoder(nn.Module):
    def __init__(self, b, levels, out_channels):
        super().__init__()
        self.blocks = nn.ModuleList()
        x_ch = b * 2 ** (levels - 1) // 2  # z_{L-1}
        for k in reversed(range(levels - 1)):
            widths = (b * 2**k, max(1, b * 2**k // 2))
            self.blocks.append(ConvBlock(x_ch + b * 2**k // 2, widths))
            x_ch = widths[1]
        self.head = _conv(x_ch, out_channels, 1)

    def forward(self, zs):
        x = zs[-1]
        for block, z in zip(self.blocks, reversed(zs[:-1])):
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
            x = block(torch.cat([x, z], dim=1))
        return self.head(x)


def product_of_gaussians(mu, logvar, mask):
    """mu, logvar [B, M, C, D, H, W]; mask [B, M] bool -> posterior (loc, logvar) [B, C, D, H, W].

    T = 1 + sum_i exp(-logvar_i), loc = sum_i mu_i exp(-logvar_i) / T, logvar = -log T, computed
    shifted by the largest log-precision so that nothing overflows."""
    m = mask.view(mask.shape[0], mask.shape[1], 1, 1, 1, 1)
    log_prec = torch.where(m, -logvar, torch.full_like(logvar, float("-inf")))
    shift = torch.clamp(log_prec.amax(dim=1), min=0.0).detach()
    scaled = torch.exp(log_prec - shift.unsqueeze(1))
    total = torch.exp(-shift) + scaled.sum(dim=1)
    loc = (scaled * torch.where(m, mu, torch.zeros_like(mu))).sum(dim=1) / total
    return loc, -(shift + torch.log(total))


class UHVEDTwin(nn.Module):
    def __init__(self, num_modalities=4, num_classes=4, base_width=8, levels=4):
        super().__init__()
        if base_width < 2 or base_width % 2:
            raise ValueError("base_width must be an even number >= 2")
        self.encoders = nn.ModuleList(Encoder(base_width, levels) for _ in range(num_modalities))
        self.seg_decoder = Decoder(base_width, levels, num_classes)
        self.image_decoders = nn.ModuleList(Decoder(base_width, levels, 1) for _ in range(num_modalities))

    def forward(self, image, mask, sample=True):
        """image [B, M, D, H, W], mask [B, M] bool -> (seg logits, reconstructions, posterior
        locs, posterior logvars); ``sample=False`` decodes the posterior means."""
        per_modality = [enc(image[:, i:i + 1]) for i, enc in enumerate(self.encoders)]
        locs, logvars, zs = [], [], []
        for k in range(len(per_modality[0])):
            feats = torch.stack([p[k] for p in per_modality], dim=1)  # [B, M, C, D, H, W]
            mu, lv = feats.chunk(2, dim=2)
            loc, logvar = product_of_gaussians(mu, lv.clamp(-LOGVAR_CLIP, LOGVAR_CLIP), mask)
            locs.append(loc)
            logvars.append(logvar)
            zs.append(loc + torch.exp(0.5 * logvar) * torch.randn_like(loc) if sample else loc)
        seg = self.seg_decoder(zs)
        recon = torch.cat([dec(zs) for dec in self.image_decoders], dim=1)
        return seg, recon, locs, logvars


    @torch.no_grad()
    def predict(self, image, mask, samples=0, generator=None, synthesis=True):
        """Inference on windows, as ``uhved_tf.model.uhved.UHVED.predict_from_posteriors``:
        image [B, M, D, H, W], mask [B, M] bool -> (softmax probabilities [B, K, D, H, W] averaged
        over ``samples`` posterior samples decoded in one batched call (0: the posterior mean),
        syntheses [B, M, D, H, W] from the posterior mean or None, entropy [B, 1, D, H, W])."""
        per_modality = [enc(image[:, i:i + 1]) for i, enc in enumerate(self.encoders)]
        locs, stds = [], []
        for k in range(len(per_modality[0])):
            feats = torch.stack([p[k] for p in per_modality], dim=1)
            mu, lv = feats.chunk(2, dim=2)
            loc, logvar = product_of_gaussians(mu, lv.clamp(-LOGVAR_CLIP, LOGVAR_CLIP), mask)
            locs.append(loc)
            stds.append(torch.exp(0.5 * logvar))
        if samples:
            zs = [(loc.unsqueeze(0) + std.unsqueeze(0) * torch.randn((samples, *loc.shape), generator=generator,
                                                                     dtype=loc.dtype)).flatten(0, 1)
                  for loc, std in zip(locs, stds)]
            prob = torch.softmax(self.seg_decoder(zs), dim=1)
            prob = prob.view(samples, -1, *prob.shape[1:]).mean(0)
        else:
            prob = torch.softmax(self.seg_decoder(locs), dim=1)
        synth = torch.cat([dec(locs) for dec in self.image_decoders], dim=1) if synthesis else None
        entropy = -(prob * torch.log(prob.clamp_min(1e-12))).sum(1, keepdim=True)
        return prob, synth, entropy


def keras_weight_names(model, modalities):
    """``{torch parameter name: Keras weight path}`` of ``uhved_tf.model.uhved.UHVED`` (paths as
    ``weight.path`` without the model's name): the same layers under the Keras model's names."""
    names = {}

    def block(torch_prefix, keras_prefix, n_units):
        for j in range(n_units):
            names[f"{torch_prefix}.norms.{j}.weight"] = f"{keras_prefix}/in_{j}/gamma"
            names[f"{torch_prefix}.norms.{j}.bias"] = f"{keras_prefix}/in_{j}/beta"
            names[f"{torch_prefix}.convs.{j}.weight"] = f"{keras_prefix}/conv_{j}/kernel"
            names[f"{torch_prefix}.convs.{j}.bias"] = f"{keras_prefix}/conv_{j}/bias"

    for i, enc in enumerate(model.encoders):
        names[f"encoders.{i}.stem.weight"] = f"encoders/encoder_{i}/conv_0/kernel"
        names[f"encoders.{i}.stem.bias"] = f"encoders/encoder_{i}/conv_0/bias"
        for k, b in enumerate(enc.blocks):
            block(f"encoders.{i}.blocks.{k}", f"encoders/encoder_{i}/block_{k + 1}", len(b.convs))
    decoders = [("seg_decoder", model.seg_decoder, "decoder_seg")]
    decoders += [(f"image_decoders.{i}", d, f"decoder_{m}") for i, (d, m) in enumerate(zip(model.image_decoders,
                                                                                           modalities))]
    for prefix, dec, keras in decoders:
        for k, b in enumerate(dec.blocks):
            block(f"{prefix}.blocks.{k}", f"{keras}/block_{k + 1}", len(b.convs))
        names[f"{prefix}.head.weight"] = f"{keras}/final_conv/kernel"
        names[f"{prefix}.head.bias"] = f"{keras}/final_conv/bias"
    return names


def load_keras_weights(model, arrays, modalities):
    """Copy the weights of a Keras U-HVED (``arrays``: ``{path: ndarray}``) into ``model``; conv
    kernels [kd, kh, kw, in, out] become [out, in, kd, kh, kw]. Every parameter must be given."""
    names = keras_weight_names(model, modalities)
    state = model.state_dict()
    missing = sorted(set(state) - set(names))
    if missing:
        raise KeyError(f"no Keras weight for {missing[:3]}")
    for name, path in names.items():
        value = np.asarray(arrays[path], np.float32)
        if value.ndim == 5:
            value = value.transpose(4, 3, 0, 1, 2)
        if tuple(value.shape) != tuple(state[name].shape):
            raise ValueError(f"{path}: shape {value.shape}, expected {tuple(state[name].shape)} for {name}")
        state[name] = torch.from_numpy(np.ascontiguousarray(value))
    model.load_state_dict(state)


def losses(model, seg, recon, locs, logvars, image, labels, num_classes, weight_decay=WEIGHT_DECAY):
    prob = torch.softmax(seg, dim=1)
    onehot = F.one_hot(labels, num_classes).permute(0, 4, 1, 2, 3).to(prob.dtype)
    axes = (0, 2, 3, 4)
    inter = (prob * onehot).sum(axes)
    denom = prob.sum(axes) + onehot.sum(axes)
    dice = 1.0 - ((2.0 * inter + 1e-5) / (denom + 1e-5)).mean()
    ce = F.cross_entropy(seg, labels)
    mse = F.mse_loss(recon, image)
    kl = sum((0.5 * (torch.exp(lv) + loc**2 - 1.0 - lv)).mean() for loc, lv in zip(locs, logvars)) / len(locs)
    decay = sum((m.weight**2).sum() for m in model.modules() if isinstance(m, nn.Conv3d))
    return (LOSS_WEIGHTS["dice"] * dice + LOSS_WEIGHTS["ce"] * ce + LOSS_WEIGHTS["recon"] * mse
            + LOSS_WEIGHTS["kl"] * kl + weight_decay * decay / 2.0)


def conv_flops_per_step(model, size):
    """Analytical conv FLOPs of one training step (forward + backward), batch 1."""
    total = 0
    shapes = {}

    def hook(module, inputs, output):
        shapes[module] = output.shape

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    n_mod = len(model.encoders)
    with torch.no_grad():
        model(torch.zeros(1, n_mod, size, size, size), torch.ones(1, n_mod, dtype=torch.bool))
    for h in handles:
        h.remove()
    stems = {enc.stem for enc in model.encoders}
    for m, out in shapes.items():
        kd, kh, kw = m.kernel_size
        fwd = 2 * kd * kh * kw * m.in_channels * m.out_channels * out[2] * out[3] * out[4]
        # backward: weight gradient + input gradient (none for the stems: their input is the image)
        total += fwd + (fwd if m in stems else 2 * fwd)
    return total


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--base-width", type=int, default=8)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    # channels_last_3d measured ~2x faster forward + backward than contiguous NCDHW for the
    # full-resolution convs (8 -> 8 and 12 -> 8 at 64^3) on the 2-core dev CPU, and the same at
    # the coarser scales: it is the default.
    p.add_argument("--memory-format", choices=("channels_last_3d", "contiguous"),
                   default="channels_last_3d")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    n_mod, n_cls, s = 4, 4, args.size
    fmt = torch.channels_last_3d if args.memory_format == "channels_last_3d" else torch.contiguous_format

    t = time.perf_counter()
    model = UHVEDTwin(n_mod, n_cls, args.base_width, args.levels).to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    build_s = time.perf_counter() - t
    n_params = sum(q.numel() for q in model.parameters())

    image = torch.from_numpy(rng.standard_normal((1, n_mod, s, s, s), dtype=np.float32))
    image = image.contiguous(memory_format=fmt)
    labels = torch.from_numpy(rng.integers(0, n_cls, (1, s, s, s))).long()
    subsets = [[(i >> j) & 1 for j in range(n_mod)] for i in range(1, 2**n_mod)]  # non-empty

    def step():
        mask = torch.tensor([subsets[rng.integers(len(subsets))]], dtype=torch.bool)
        optimizer.zero_grad(set_to_none=True)
        seg, recon, locs, logvars = model(image, mask)
        loss = losses(model, seg, recon, locs, logvars, image, labels, n_cls)
        loss.backward()
        optimizer.step()
        return loss.item()

    t = time.perf_counter()
    loss = step()
    first_step_s = time.perf_counter() - t
    if not np.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss}")
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = peak_rss_bytes()
    flops = conv_flops_per_step(model, s)
    print(json.dumps({
        "torch": torch.__version__, "threads": threads, "size": s,
        "import_s": round(_IMPORT_S, 4), "build_s": round(build_s, 4),
        "first_step_s": round(first_step_s, 4),
        "step_s": round(statistics.median(times), 4) if times else None,
        "step_times": [round(x, 4) for x in times], "peak_rss_bytes": peak,
        "conv_gflop_per_step": round(flops / 1e9, 6), "params": n_params,
        "memory_format": args.memory_format,
    }), flush=True)


if __name__ == "__main__":
    main()
