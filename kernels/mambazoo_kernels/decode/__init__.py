from .op import causal_conv1d_update, selective_state_update

__all__ = ["selective_state_update", "causal_conv1d_update"]
