"""A float64 Mamba-2 mixer written from the Mamba-2 equations, sharing no code with mambazoo.

It splits ``in_proj``'s output by the documented row layout ``[z, x, B_0, C_0, (B_1, C_1), dt_0,
(dt_1)]``, runs mamba_ssm's slow-path conv (``F.conv1d`` with padding, then truncate; the reversed
direction on the flipped sequence, flipped back), the SSD as a Python loop over time
(``s = exp(dt A) s + dt B x``, ``y = C.s + D x``) and the gated RMSNorm ``rmsnorm(y * silu(z))``
per group. Used by tests/layers/test_mamba2.py and tests/models/test_vim2.py.
"""
import torch
import torch.nn.functional as F

FORWARD = dict(conv1d="conv1d", dt_bias="dt_bias", A_log="A_log", D="D")
BACKWARD = dict(conv1d="conv1d_b", dt_bias="dt_bias_b", A_log="A_b_log", D="D_b")


def naive_direction(mixer, hidden_states, names, index, n_dirs):
    """One direction's SSD output (batch, length, d_inner) for hidden_states in that direction's
    reading order, from the documented in_proj rows [z, x, B_0, C_0, (B_1, C_1), dt_0, (dt_1)]."""
    di, h, p, g, n = mixer.d_inner, mixer.nheads, mixer.headdim, mixer.ngroups, mixer.d_state
    W = mixer.in_proj.weight
    bc_rows = W[2 * di + index * 2 * g * n: 2 * di + (index + 1) * 2 * g * n]
    dt_rows = W[2 * di + n_dirs * 2 * g * n + index * h: 2 * di + n_dirs * 2 * g * n + (index + 1) * h]
    xbc = hidden_states @ torch.cat([W[di:2 * di], bc_rows]).T  # (batch, length, conv_dim)
    dt = hidden_states @ dt_rows.T  # (batch, length, heads)
    conv = getattr(mixer, names["conv1d"])
    length = hidden_states.shape[1]
    xbc = F.conv1d(xbc.transpose(1, 2), conv.weight, conv.bias, padding=mixer.d_conv - 1,
                   groups=xbc.shape[-1])[..., :length]
    xbc = F.silu(xbc).transpose(1, 2)
    x, B, C = xbc.split([di, g * n, g * n], dim=-1)
    x = x.reshape(*x.shape[:2], h, p)
    B = B.reshape(*B.shape[:2], g, n).repeat_interleave(h // g, dim=2)  # per head
    C = C.reshape(*C.shape[:2], g, n).repeat_interleave(h // g, dim=2)
    dt = F.softplus(dt + getattr(mixer, names["dt_bias"]))
    A = -torch.exp(getattr(mixer, names["A_log"]))
    D = getattr(mixer, names["D"])
    s = x.new_zeros(x.shape[0], h, p, n)
    ys = []
    for t in range(length):
        s = torch.exp(dt[:, t] * A)[..., None, None] * s + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None]
        ys.append((s * C[:, t, :, None]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1).flatten(-2)


def naive_gated_norm(y, z, weight, group_size, eps=1e-5):
    gated = y * z * torch.sigmoid(z)
    groups = gated.reshape(*gated.shape[:-1], -1, group_size)
    groups = groups / torch.sqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    return groups.reshape(gated.shape) * weight


def naive_mixer(mixer, hidden_states, average=True):
    """Mamba-2 mixer: per direction SSD (the reversed one on the flipped sequence), sum, norm, out_proj."""
    n_dirs = 2 if hasattr(mixer, "conv1d_b") else 1
    y = naive_direction(mixer, hidden_states, FORWARD, 0, n_dirs)
    if n_dirs == 2:
        y_b = naive_direction(mixer, hidden_states.flip(1), BACKWARD, 1, 2).flip(1)
        y = (y + y_b) / 2 if average else y + y_b
    z = hidden_states @ mixer.in_proj.weight[:mixer.d_inner].T
    normed = naive_gated_norm(y, z, mixer.norm.weight, mixer.d_inner // mixer.ngroups)
    return normed @ mixer.out_proj.weight.T
