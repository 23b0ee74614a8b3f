"""Integrations of PDCR and UAFS into third-party training frameworks.

Each submodule needs its framework installed and is imported explicitly (``import dragsaw`` never imports them):

* :mod:`dragsaw.integrations.nnunet`: nnU-Net v2 trainers (``pip install dragsaw[nnunet]``; see docs/nnunet.md).
"""
