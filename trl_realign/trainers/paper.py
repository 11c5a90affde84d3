"""The paper every trainer here implements, in the form TRL's model cards read (`Trainer._paper`)."""

import textwrap


REALIGN_PAPER = {
    "title": "Flexible Realignment of Language Models",
    "id": "2506.12704",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @article{zhu2025flexible,
            title        = {{Flexible Realignment of Language Models}},
            author       = {Wenhong Zhu and Ruobing Xie and Weinan Zhang and Rui Wang},
            year         = 2025,
            journal      = {arXiv preprint arXiv:2506.12704},
        }"""),
}
