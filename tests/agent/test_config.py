"""Agent configuration: TOML file plus command line into one frozen, validated AgentConfig."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.backoff import Backoff
from agent.config import AgentConfig, load_config, parse_byte_size, parse_cpu_list, parse_labels, validate_labels
from agent.errors import AgentConfigError, AgentError, EnrollmentError, IdentityError, TransportError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_apply_when_only_data_dir_is_given(tmp_path: Path) -> None:
    """Every field but data_dir has the documented default."""
    config = load_config(None, data_dir=tmp_path)
    assert config.data_dir == tmp_path
    assert config.heartbeat_interval_seconds == 10.0
    assert (config.connect_timeout_seconds, config.rpc_timeout_seconds) == (10.0, 15.0)
    assert (config.reconnect_initial_seconds, config.reconnect_max_seconds) == (0.5, 30.0)
    assert (config.labels, config.fact_overrides) == ({}, {})
    assert (config.onnx_threads, config.model_memory_budget_bytes) == (0, 0)
    assert config.max_message_bytes == 4 * 1024 * 1024
    assert config.local_api_tcp_port is None


def test_file_values_are_read_with_tables_for_labels_and_overrides(tmp_path: Path) -> None:
    """A TOML file sets scalars, [labels] and [fact_overrides]; overrides come back normalised."""
    path = write(
        tmp_path,
        'data_dir = "/var/lib/edgefleet"\nheartbeat_interval_seconds = 2.5\nonnx_threads = 2\n'
        '[labels]\nsite = "depot-7"\n"fleet/route" = "A-12"\n'
        '[fact_overrides]\narchitecture = "aarch64"\ncpu_flags = ["asimd"]\n'
        "memory_total_bytes = 1073741824\n",
    )
    config = load_config(path)
    assert config.data_dir == Path("/var/lib/edgefleet")
    assert (config.heartbeat_interval_seconds, config.onnx_threads) == (2.5, 2)
    assert config.labels == {"site": "depot-7", "fleet/route": "A-12"}
    assert config.fact_overrides == {
        "architecture": "aarch64",
        "cpu_flags": ["asimd", "neon"],
        "memory_total_bytes": 1073741824,
    }


def test_command_line_values_replace_file_values_and_none_means_not_given(tmp_path: Path) -> None:
    """A CLI value wins over the file's; a CLI value of None leaves the file's value."""
    path = write(
        tmp_path,
        f'data_dir = "{tmp_path}"\nonnx_threads = 2\nrpc_timeout_seconds = 20.0\n[labels]\na = "1"\n',
    )
    config = load_config(path, onnx_threads=4, rpc_timeout_seconds=None, labels={"b": "2"})
    assert (config.onnx_threads, config.rpc_timeout_seconds) == (4, 20.0)
    assert config.labels == {"b": "2"}  # replaced whole, not merged


def test_relative_data_dir_in_file_is_relative_to_the_file(tmp_path: Path) -> None:
    """data_dir = "state" in /x/agent.toml means /x/state, wherever the agent was started."""
    assert load_config(write(tmp_path, 'data_dir = "state"\n')).data_dir == tmp_path / "state"


def test_relative_data_dir_on_command_line_is_relative_to_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--data-dir state means ./state, made absolute."""
    monkeypatch.chdir(tmp_path)
    assert load_config(None, data_dir="state").data_dir == tmp_path / "state"


def test_unknown_key_in_file_names_the_key_the_file_and_a_close_match(tmp_path: Path) -> None:
    """A misspelt key is an error whose message names it, the file, and the key that was meant."""
    path = write(tmp_path, f'data_dir = "{tmp_path}"\nheartbeat_interval = 5\n')
    with pytest.raises(AgentConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "'heartbeat_interval'" in message
    assert str(path) in message
    assert "heartbeat_interval_seconds" in message


def test_unknown_command_line_option_is_rejected(tmp_path: Path) -> None:
    """A keyword that is no AgentConfig field raises AgentConfigError."""
    with pytest.raises(AgentConfigError, match="'colour'"):
        load_config(None, data_dir=tmp_path, colour="blue")


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("heartbeat_interval_seconds = 0.1", "heartbeat_interval_seconds"),
        ("heartbeat_interval_seconds = 3601", "heartbeat_interval_seconds"),
        ('heartbeat_interval_seconds = "10"', "heartbeat_interval_seconds"),
        ("onnx_threads = 257", "onnx_threads"),
        ("onnx_threads = true", "onnx_threads"),
        ("model_memory_budget_bytes = -1", "model_memory_budget_bytes"),
        ("max_message_bytes = 10", "max_message_bytes"),
        ("local_api_tcp_port = 70000", "local_api_tcp_port"),
        ("connect_timeout_seconds = 0", "connect_timeout_seconds"),
        ("reconnect_initial_seconds = 10.0\nreconnect_max_seconds = 5.0", "reconnect_max_seconds"),
        ("[fact_overrides]\ncpu_cores = 0", "cpu_cores"),
        ("[fact_overrides]\ngpu = true", "'gpu'"),
        ('[labels]\nSite = "x"', "'Site'"),
    ],
)
def test_invalid_value_gives_one_line_error_naming_the_field(tmp_path: Path, toml: str, needle: str) -> None:
    """An out-of-range or wrongly typed value raises AgentConfigError with one line naming the field."""
    with pytest.raises(AgentConfigError) as caught:
        load_config(write(tmp_path, f'data_dir = "{tmp_path}"\n{toml}\n'))
    message = str(caught.value)
    assert needle in message
    assert "\n" not in message


def test_error_says_whether_the_bad_value_came_from_file_or_command_line(tmp_path: Path) -> None:
    """The message names the source of the rejected value."""
    path = write(tmp_path, f'data_dir = "{tmp_path}"\nonnx_threads = 999\n')
    with pytest.raises(AgentConfigError, match=rf"onnx_threads \(from {path}\)"):
        load_config(path)
    with pytest.raises(AgentConfigError, match=r"onnx_threads \(from command line\)"):
        load_config(path, onnx_threads=-1)


def test_missing_data_dir_is_reported_as_required() -> None:
    """Without data_dir in the file or on the command line the error says it is required."""
    with pytest.raises(AgentConfigError, match="data_dir is required"):
        load_config(None)


def test_unreadable_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file, or one that is not TOML, raises AgentConfigError naming the file."""
    with pytest.raises(AgentConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml")
    path = write(tmp_path, "data_dir = \n")
    with pytest.raises(AgentConfigError, match=f"{path} is not valid TOML"):
        load_config(path)


def test_config_is_frozen(tmp_path: Path) -> None:
    """Assigning to a field of a loaded config raises."""
    config = load_config(None, data_dir=tmp_path)
    with pytest.raises(ValidationError):
        config.onnx_threads = 3  # type: ignore[misc]


def test_reconnect_settings_become_a_backoff_policy(tmp_path: Path) -> None:
    """reconnect_backoff() carries the configured initial and max delays."""
    config = load_config(None, data_dir=tmp_path, reconnect_initial_seconds=1.0, reconnect_max_seconds=60.0)
    assert config.reconnect_backoff() == Backoff(initial_seconds=1.0, max_seconds=60.0)


def test_agent_config_can_be_built_directly_in_tests(tmp_path: Path) -> None:
    """AgentConfig(...) validates the same way load_config does."""
    assert AgentConfig(data_dir=tmp_path).data_dir == tmp_path
    with pytest.raises(ValidationError, match="absolute"):
        AgentConfig(data_dir=Path("relative"))


# --- labels -------------------------------------------------------------------------------------


def test_parse_labels_reads_comma_separated_pairs() -> None:
    """Text like k=v,k2=v2 gives a dict; whitespace is dropped and a value may contain '='."""
    assert parse_labels(" site = depot-7 , fleet/route=A=12 ") == {"site": "depot-7", "fleet/route": "A=12"}


def test_parse_labels_of_blank_text_is_empty() -> None:
    """An empty --labels option means no labels."""
    assert parse_labels("  ") == {}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("site", "not key=value"),
        ("=x", "not key=value"),
        ("a=1,,b=2", "item 2 is empty"),
        ("a=1,", "item 2 is empty"),
        ("a=1,a=2", "given twice"),
        ("Site=x", "label key 'Site'"),
        ("-a=x", "label key '-a'"),
        ("a=" + "x" * 129, "at most 128"),
        ("a=tab\there", "printable"),
    ],
)
def test_parse_labels_rejects_malformed_input_with_a_specific_message(text: str, needle: str) -> None:
    """Each kind of malformed --labels input raises AgentConfigError saying what is wrong."""
    with pytest.raises(AgentConfigError, match=needle):
        parse_labels(text)


def test_at_most_32_labels() -> None:
    """A 33rd label is rejected."""
    validate_labels({f"k{i}": "v" for i in range(32)})
    with pytest.raises(AgentConfigError, match="too many labels"):
        validate_labels({f"k{i}": "v" for i in range(33)})


def test_label_key_may_be_63_characters_but_not_64() -> None:
    """Label keys are at most 63 characters long."""
    validate_labels({"a" * 63: "v"})
    with pytest.raises(AgentConfigError):
        validate_labels({"a" * 64: "v"})


# --- errors -------------------------------------------------------------------------------------


def test_every_agent_error_shares_one_base_and_config_errors_are_value_errors() -> None:
    """Callers can catch AgentError for all, and AgentConfigError as ValueError."""
    for error in (AgentConfigError, EnrollmentError, TransportError, IdentityError):
        assert issubclass(error, AgentError)
    assert issubclass(AgentConfigError, ValueError)


# --- simulated device classes: CPU affinity, memory budget ------------------------------------------

ALLOWED_CPUS = sorted(os.sched_getaffinity(0))


def test_cpu_affinity_defaults_to_empty_and_takes_usable_cpus_sorted_without_duplicates(tmp_path: Path) -> None:
    assert load_config(None, data_dir=tmp_path).cpu_affinity == ()
    cpu = ALLOWED_CPUS[-1]
    assert load_config(None, data_dir=tmp_path, cpu_affinity=(cpu, cpu)).cpu_affinity == (cpu,)
    path = write(tmp_path, f'data_dir = "{tmp_path}"\ncpu_affinity = [{cpu}]\n')
    assert load_config(path).cpu_affinity == (cpu,)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ((max(ALLOWED_CPUS) + 1,), "are not available to this process (available: "),
        ((-1,), "CPU indexes must be >= 0"),
        ((True,), "Input should be a valid integer (got True)"),
        (("0",), "Input should be a valid integer (got '0')"),
    ],
    ids=["unavailable", "negative", "bool", "string"],
)
def test_cpu_affinity_outside_the_usable_cpus_is_refused(tmp_path: Path, value: tuple, needle: str) -> None:
    with pytest.raises(AgentConfigError) as caught:
        load_config(None, data_dir=tmp_path, cpu_affinity=value)
    message = str(caught.value)
    assert needle in message and "cpu_affinity" in message and "(from command line)" in message


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", (0,)), ("0,1", (0, 1)), ("0-3", (0, 1, 2, 3)), ("3, 0-1 ,1", (0, 1, 3)), ("2-2", (2,))],
)
def test_parse_cpu_list_reads_indexes_and_ranges(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty CPU list"),
        ("0,", "'' is not a CPU index"),
        ("a", "'a' is not a CPU index"),
        ("-1", "'-1' is not a CPU index"),
        ("1-", "'1-' is not a CPU index"),
        ("0-1-2", "'0-1-2' is not a CPU index"),
        ("3-1", "range '3-1' is reversed"),
        ("5000", "CPU index 5000 is over 4095"),
    ],
)
def test_parse_cpu_list_rejects_malformed_lists_naming_the_option(text: str, needle: str) -> None:
    with pytest.raises(AgentConfigError) as caught:
        parse_cpu_list(text, "--cpu-affinity")
    assert str(caught.value).startswith("--cpu-affinity: ") and needle in str(caught.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("1234", 1234), ("12B", 12), ("512KiB", 512 * 1024), ("256MiB", 256 * 2**20), ("2 gib", 2 * 2**30)],
)
def test_parse_byte_size_reads_binary_units(text: str, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "1.5GiB", "-1", "256MB", "256 MiB extra", "0x10"])
def test_parse_byte_size_rejects_other_spellings(text: str) -> None:
    with pytest.raises(AgentConfigError, match=r"^--memory-budget: .* is not a whole number with an optional unit"):
        parse_byte_size(text, "--memory-budget")
