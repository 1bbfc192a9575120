"""User plug-ins: networks (and fusions, as networks) named in the INI by dotted path.

``[NETWORK] name = extensions.zero_fill_unet.ZeroFillUNet`` loads the class from this package; the
registry (:mod:`uhved_tf.model.registry`) imports nothing outside it and checks that the class
subclasses :class:`uhved_tf.model.base.BaseNetwork`. See docs/extensions.md.
"""
