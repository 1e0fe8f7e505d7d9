"""``sshgateway recordings list|show|play|export``: reading session recordings.

The reader side of asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/), the
format the gateway's recorder writes under ``<state_dir>/recordings/`` (or
``[recording] dir``): a JSON header line, then one ``[time, code, data]`` event per line.
Files are input like any other and are read tolerantly: unknown header keys and event
codes are kept or passed over, a line that is not JSON (the half-written last line of a
crash) or too long is skipped with a note, and every header value is checked and bounded
before it is shown (control characters never reach the terminal except through ``play``,
whose purpose is to replay them).

Modules, one concern each:

- ``cast``     one file: its header, and a streaming scan of its events;
- ``store``    the recordings directory of a gateway, finding a recording by ID;
- ``player``   replaying output events with their timing (speed, idle cap);
- ``command``  the options, and running a subcommand.
"""
