"""The ``keyless`` command line: :mod:`.main` (the parser, ``token``/``env``/``exec``/
``schema``) and one module per other command group (:mod:`.serve`, :mod:`.doctor`,
:mod:`.audit`, :mod:`.demo`, :mod:`.devissuer`)."""

from .main import COMMAND_MODULES, FORWARDED_SIGNALS, exit_status, main

__all__ = ["COMMAND_MODULES", "FORWARDED_SIGNALS", "exit_status", "main"]
