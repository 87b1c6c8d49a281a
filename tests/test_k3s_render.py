"""The K3s layer's rendered files and air-gap artifact checks (keybuzz/k3s/settings.py, templates/k3s/), pure:
no K3s binary exists on any registry this project reaches, so nothing here runs K3s."""

from __future__ import annotations

import ast
import hashlib

import kubernetes_validate
import pytest
import yaml

from helpers import ROOT
from keybuzz.base_os.settings import NO_DOCKER_ROLES, open_ports, trusted_networks
from keybuzz.errors import PinRefused
from keybuzz.k3s import settings as K
from keybuzz.versions import load_versions

K8S = "1.30.0"  # the minor of the pinned K3s (v1.30.4+k3s1)
MASTERS = [("k3s-master-01", "10.0.0.41"), ("k3s-master-02", "10.0.0.42"), ("k3s-master-03", "10.0.0.43")]


def test_kubernetes_minor_matches_the_pinned_k3s():
    assert load_versions(override="", lock="")["k3s_version"].startswith("v" + K8S.rsplit(".", 1)[0] + ".")


def _config(node) -> dict:
    return yaml.safe_load(K.render_config(node))


def test_first_master_starts_the_cluster_with_the_load_balancers_in_its_certificate():
    c = _config(K.master_config("k3s-master-01", "10.0.0.41", "ens10", first=True, join_ip=None))
    assert c["cluster-init"] is True and "server" not in c
    assert c["tls-san"] == ["10.0.0.5", "10.0.0.6"]
    assert c["node-ip"] == c["advertise-address"] == "10.0.0.41" and c["flannel-iface"] == "ens10"
    assert c["disable"] == ["traefik", "servicelb"]
    assert c["token-file"] == K.TOKEN_FILE and "token" not in c
    assert c["write-kubeconfig-mode"] == "0600" and c["secrets-encryption"] is True


def test_other_masters_join_the_first_and_workers_join_through_the_load_balancer():
    m2 = _config(K.master_config("k3s-master-02", "10.0.0.42", "ens10", first=False, join_ip="10.0.0.41"))
    assert m2["server"] == "https://10.0.0.41:6443" and "cluster-init" not in m2
    assert m2["tls-san"] == ["10.0.0.5", "10.0.0.6"]
    w = _config(K.worker_config("k3s-worker-01", "10.0.0.51", "ens10"))
    assert w == {"token-file": K.TOKEN_FILE, "node-name": "k3s-worker-01", "node-ip": "10.0.0.51",
                 "flannel-iface": "ens10", "server": "https://10.0.0.5:6443"}


@pytest.mark.parametrize("server, word", [(True, "server"), (False, "agent")])
def test_units_start_k3s_without_any_secret(server, word):
    unit = K.render_unit(server)
    assert f"ExecStart={K.BINARY} {word}\n" in unit
    assert "--token" not in unit and "K3S_" not in unit and "Environment" not in unit


def test_the_token_is_written_only_by_secret_file_and_compared_only_as_a_digest():
    """deploys/k3s.py: K3S_TOKEN's value is unmasked only inside secret_file(content=HiddenValue(...)) (root 0600,
    never printed) and token_digest(...)."""
    tree = ast.parse((ROOT / "deploys" / "k3s.py").read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    uses = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "unmask"
            and isinstance(n.value, ast.Name) and n.value.id == "TOKEN"]
    assert uses
    for use in uses:
        call = parents[parents[use]]  # TOKEN.unmask() is the argument of this call
        assert isinstance(call, ast.Call)
        name = call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id
        assert name in ("HiddenValue", "token_digest"), ast.unparse(call)
        if name == "HiddenValue":
            outer = parents[parents[call]]
            assert isinstance(outer, ast.Call) and outer.func.id == "secret_file", ast.unparse(outer)


def test_with_a_mirror_nodes_never_fall_back_to_the_internet():
    for node in (K.master_config("k3s-master-01", "10.0.0.41", "ens10", True, None, mirror_only=True),
                 K.worker_config("k3s-worker-01", "10.0.0.51", "ens10", mirror_only=True)):
        assert _config(node)["disable-default-registry-endpoint"] is True
    assert "disable-default-registry-endpoint" not in _config(K.worker_config("k3s-worker-01", "10.0.0.51", "ens10"))


def test_registries_send_every_image_through_the_mirror():
    plain = yaml.safe_load(K.render_registries("172.30.0.2:5000", ["172.30.0.2:5000"]))
    assert plain == {"mirrors": {"*": {"endpoint": ["http://172.30.0.2:5000"]}}}
    tls = yaml.safe_load(K.render_registries("mirror.internal:5000", []))
    assert tls["mirrors"]["*"]["endpoint"] == ["https://mirror.internal:5000"]


@pytest.fixture(scope="module")
def ingress() -> list[dict]:
    image = load_versions(override="", lock="")["nginx_ingress_image"]
    return list(yaml.safe_load_all(K.render_ingress(image)))


def test_ingress_manifests_are_valid_for_the_pinned_kubernetes(ingress):
    for doc in ingress:
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_ingress_is_a_daemonset_on_the_host_network_of_every_node(ingress):
    ds = next(d for d in ingress if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["tolerations"] == [{"operator": "Exists"}]  # masters too, whatever their taints
    (container,) = pod["containers"]
    assert {p["hostPort"] for p in container["ports"] if "hostPort" in p} == {80, 443}
    assert container["image"] == "nginx/nginx-ingress:5.2.1"
    assert "-enable-snippets=false" in container["args"] and "-enable-telemetry-reporting=false" in container["args"]
    cls = next(d for d in ingress if d["kind"] == "IngressClass")
    assert cls["metadata"]["name"] == K.INGRESS_CLASS and cls["spec"]["controller"] == "nginx.org/ingress-controller"


def test_firewall_opens_the_cluster_ports_and_trusts_pods_and_services():
    tcp, udp = open_ports("k3s_masters")
    assert {"6443", "10250", "2379-2380", "80", "443"} <= set(tcp) and udp == ["8472"]
    assert open_ports("k3s_workers") == (tcp, udp)
    assert trusted_networks("k3s_workers") == [K.CLUSTER_CIDR, K.SERVICE_CIDR]
    assert set(NO_DOCKER_ROLES) == {"k3s_masters", "k3s_workers"}


# --- the air-gap artifacts ---------------------------------------------------------------------------------------

VERSION = "v1.30.4+k3s1"


def _assets(tmp_path, images=True, sums_for=None, corrupt=None):
    d = tmp_path / VERSION
    d.mkdir()
    # small stand-in files: the checks are about presence and checksums, not about what the bytes are
    files = {K.BINARY_ASSET: b"stand-in binary\n", **({K.IMAGES_ASSET: b"stand-in images\n"} if images else {})}
    for name, data in files.items():
        (d / name).write_bytes(data)
    listed = sums_for if sums_for is not None else list(files)
    lines = [f"{hashlib.sha256(files.get(n, b'') + (b'x' if n == corrupt else b'')).hexdigest()}  {n}"
             for n in listed]
    (d / K.SUMS_ASSET).write_text("\n".join(lines) + "\n")
    return {K.ARTIFACTS_ENV: str(tmp_path)}


def test_verified_artifacts(tmp_path):
    found = K.verify_artifacts(VERSION, need_images=True, environ=_assets(tmp_path))
    assert found.binary.name == "k3s" and found.images.name == K.IMAGES_ASSET


def test_images_are_optional_when_the_mirror_serves_them(tmp_path):
    env = _assets(tmp_path, images=False)
    assert K.verify_artifacts(VERSION, need_images=False, environ=env).images is None
    with pytest.raises(PinRefused, match=f"{K.IMAGES_ASSET} is missing; download"):
        K.verify_artifacts(VERSION, need_images=True, environ=env)


def test_missing_checksum_list_is_refused_with_the_fix(tmp_path):
    with pytest.raises(PinRefused) as err:
        K.verify_artifacts(VERSION, need_images=True, environ={K.ARTIFACTS_ENV: str(tmp_path)})
    assert err.value.key == "k3s_version"
    assert f"{tmp_path}/{VERSION}/{K.SUMS_ASSET} is missing; download {K.SUMS_ASSET}" in err.value.reason
    assert "releases/tag/v1.30.4%2Bk3s1" in err.value.reason


def test_checksum_mismatch_is_refused(tmp_path):
    env = _assets(tmp_path, corrupt=K.BINARY_ASSET)
    with pytest.raises(PinRefused, match=r"/k3s: sha256 [0-9a-f]{64} does not match"):
        K.verify_artifacts(VERSION, need_images=True, environ=env)


def test_a_list_without_the_binary_is_refused(tmp_path):
    env = _assets(tmp_path, sums_for=[K.IMAGES_ASSET])
    with pytest.raises(PinRefused, match="lists no checksum for k3s"):
        K.verify_artifacts(VERSION, need_images=True, environ=env)


def test_preflight_refuses_missing_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv(K.ARTIFACTS_ENV, str(tmp_path))
    monkeypatch.delenv(K.DRY_WITHOUT_ARTIFACTS_ENV, raising=False)
    with pytest.raises(PinRefused, match="is missing"):
        K.preflight({"k3s_version": VERSION, "registry_mirror": ""})


def test_dry_run_without_artifacts_only_with_pyinfra_dry(tmp_path):
    env = {K.ARTIFACTS_ENV: str(tmp_path), K.DRY_WITHOUT_ARTIFACTS_ENV: "1"}
    versions = {"k3s_version": VERSION, "registry_mirror": ""}
    dry = K.artifacts(versions, argv=["pyinfra", "-y", "--dry", "inventory.py", "deploys/k3s.py"], environ=env)
    assert dry.dry_without_artifacts and dry.binary is None
    with pytest.raises(PinRefused, match="is for `pyinfra --dry` only"):
        K.artifacts(versions, argv=["pyinfra", "-y", "inventory.py", "deploys/k3s.py"], environ=env)
