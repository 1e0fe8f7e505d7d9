"""``sshgateway flows list|show|compare``: reading flow records and showing them to people.

The reader side of the flow-record format (v1, written by the recorder as JSON lines in
``<state_dir>/flows/flows.jsonl`` and its rotations ``.1``, ``.2``, ...), the alignment of
two flows by the six stages, and the text, JSON and HTML renderings. The records are input
like any other: a line that is too long, not JSON or not a flow is skipped with a note, and
every field is checked and bounded before it is shown (control characters never reach a
terminal, markup never reaches the HTML).

Modules, one concern each:

- ``command``       the options, and running a subcommand;
- ``store``         the record files of a state directory, finding a flow by ID;
- ``records``       one record checked into a :class:`~tools.flows.records.Flow`;
- ``align``         two flows stage by stage, and what each negotiated, by meaning;
- ``labels``        how values read in every rendering;
- ``render_text``   list, show and compare for a terminal;
- ``render_json``   the same as JSON;
- ``render_html``   compare as one self-contained page;
- ``sequence_svg``  the page's two-column sequence diagram;
- ``markup``        ElementTree building, escaped by construction.
"""
