"""One module per RL algorithm. Every module here is imported when :mod:`rmkit.algorithms.base`
loads, and each registers its :class:`~rmkit.algorithms.base.Algorithm` with ``@register``:
adding an algorithm is adding a module (docs/algorithms.md, "Adding an algorithm")."""
