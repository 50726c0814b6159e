"""Writing the kNN memory: what an indexing pass keeps of each memory layer."""
from __future__ import annotations

from .rotary import rotate
from .state import Stop


class Capture:
    """Write: collect un-rotated keys and values of the last ``n`` tokens per layer.

    Keys are stored un-rotated (see knn.py): the post-RoPE key of a token at local
    position p is rotated by -p, so a read can place it at any position."""

    def __init__(self, layers, n, inv_freq):
        self.layers, self.n, self.inv_freq = set(layers), n, inv_freq
        self.last = max(layers)
        self.keys, self.values = {}, {}

    def take(self, layer, key, value, key_pos) -> None:
        """Keep ``layer``'s keys and values; Stop after the deepest layer stored."""
        if layer in self.layers:
            n = min(self.n, key.shape[2])
            self.keys[layer] = rotate(key[0, :, -n:].float(), -key_pos[-n:], self.inv_freq)
            self.values[layer] = value[0, :, -n:].float()
        if layer == self.last:
            raise Stop()
