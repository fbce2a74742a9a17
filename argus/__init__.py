"""The ``argus`` command line: composes the subcommands of model/, index/ and service/."""
