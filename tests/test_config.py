import pytest

from conftest import write
from feedback_nlp.config import load_settings, load_train_settings
from feedback_nlp.errors import InputError


@pytest.mark.parametrize("loader", [load_settings, load_train_settings])
def test_config_unknown_keys_and_wrong_types_name_the_file(tmp_path, loader):
    with pytest.raises(InputError, match=r"\[E003\] .*bad\.yaml: unknown key\(s\) \['nope'\]"):
        loader(write(tmp_path / "bad.yaml", "nope: 1\n"))
    with pytest.raises(InputError, match=r"\[E032\] .*list\.yaml"):
        loader(write(tmp_path / "list.yaml", "- a\n- b\n"))


def test_config_wrong_value_type_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"\[E032\] .*t\.yaml"):
        load_train_settings(write(tmp_path / "t.yaml", "C: [1]\n"))


def test_config_cli_overrides_left_at_none_keep_the_file_value():
    s = load_settings()
    assert s.replace(chunk_size=None, threads=1).chunk_size == s.chunk_size
    assert s.replace(threads=1).threads == 1
    t = load_train_settings()
    assert t.replace(seed=None).seed == t.seed and t.replace(seed=7).seed == 7
    assert isinstance(s.languages, tuple)
