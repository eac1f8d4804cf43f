# Shared by the mmdet/mmseg configs (configs/mmdet_*.py, configs/mmseg_*.py), whose own optimizer
# constructor cannot read the model's no_weight_decay(): no weight decay on the SSM parameters
# (A_log / A_b_log, D / D_b, dt biases), the embeddings and the norms (custom_keys match by
# substring of the parameter name), and gradient clipping. Each config adds its optimizer.
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            "mixer.A_log": dict(decay_mult=0.0),
            "mixer.A_b_log": dict(decay_mult=0.0),
            "mixer.D": dict(decay_mult=0.0),  # D and D_b
            "dt_proj.bias": dict(decay_mult=0.0),
            "dt_proj_b.bias": dict(decay_mult=0.0),
            "pos_embed": dict(decay_mult=0.0),
            "cls_token": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0),
        }
    ),
    clip_grad=dict(max_norm=1.0),
)
