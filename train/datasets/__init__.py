"""Built-in data set loaders, registered with :func:`extune.train.data.register_dataset`.

Users import :mod:`extune.train.data` (which imports these modules); nothing here is public.
Each module registers one family: ``synthetic``, ``cifar10``/``cifar100``, ``tiny-imagenet``
and ``imagefolder``.
"""
