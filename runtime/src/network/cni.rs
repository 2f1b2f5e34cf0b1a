//! CNI plugins run the way libcni runs them: the plugin binary from the
//! plugin directory, the verb and the attachment in `CNI_*` variables, the
//! network configuration on stdin, the result (or an error object) as JSON
//! on stdout. A network is a conflist: its plugins run in order on ADD,
//! each given the previous one's result, and in reverse order on DEL.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::subnet::Subnet;
use crate::Error;

pub const CNI_VERSION: &str = "1.0.0";

/// A network configuration list and where its plugins are.
#[derive(Clone, Debug)]
pub struct Conflist {
    pub config: Value,
    pub plugin_dir: PathBuf,
}

/// What rbuild's bridge network is made of.
pub fn bridge_conflist(
    bridge: &str,
    subnet: &Subnet,
    ipam_dir: &Path,
    plugin_dir: &Path,
) -> Conflist {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet.to_string(), "gateway": subnet.gateway().to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        },
    })];
    // A host whose FORWARD policy is DROP (dockerd sets it) forwards a
    // namespace's traffic only with the firewall plugin's accept rules.
    if plugin_dir.join("firewall").exists() {
        plugins.push(json!({"type": "firewall", "backend": "iptables"}));
    }
    Conflist {
        config: json!({
            "cniVersion": CNI_VERSION,
            "name": format!("rbuild-{bridge}"),
            "plugins": plugins,
        }),
        plugin_dir: plugin_dir.to_path_buf(),
    }
}

/// The loopback interface, brought up on its own (as BuildKit and nerdctl do).
pub fn loopback_conflist(plugin_dir: &Path) -> Conflist {
    Conflist {
        config: json!({
            "cniVersion": CNI_VERSION,
            "name": "rbuild-loopback",
            "plugins": [{"type": "loopback"}],
        }),
        plugin_dir: plugin_dir.to_path_buf(),
    }
}

/// One attachment's identity to the plugins.
pub struct Target<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
}

impl Conflist {
    fn plugins(&self) -> Vec<Value> {
        self.config["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn plugin_config(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.config["name"].clone();
        conf["cniVersion"] = self.config["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// ADD through every plugin; the last result.
    pub async fn add(&self, target: &Target<'_>) -> Result<Value, Error> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let conf = self.plugin_config(&plugin, prev.as_ref());
            prev = Some(invoke(&self.plugin_dir, &plugin, "ADD", target, &conf).await?);
        }
        prev.ok_or_else(|| Error::Network("a network configuration without plugins".into()))
    }

    /// CHECK through every plugin against the ADD result.
    pub async fn check(&self, target: &Target<'_>, result: &Value) -> Result<(), Error> {
        for plugin in self.plugins() {
            let conf = self.plugin_config(&plugin, Some(result));
            invoke(&self.plugin_dir, &plugin, "CHECK", target, &conf).await?;
        }
        Ok(())
    }

    /// DEL through every plugin in reverse order; every plugin is asked
    /// even when one fails (the first error is returned).
    pub async fn del(&self, target: &Target<'_>, result: Option<&Value>) -> Result<(), Error> {
        let mut first_error = None;
        for plugin in self.plugins().iter().rev() {
            let conf = self.plugin_config(plugin, result);
            if let Err(e) = invoke(&self.plugin_dir, plugin, "DEL", target, &conf).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

async fn invoke(
    plugin_dir: &Path,
    plugin: &Value,
    command: &str,
    target: &Target<'_>,
    conf: &Value,
) -> Result<Value, Error> {
    let kind = plugin["type"].as_str().unwrap_or_default();
    let binary = plugin_dir.join(kind);
    if !binary.exists() {
        return Err(Error::Network(format!(
            "the CNI plugin {kind:?} is not in {} (install the CNI plugins there, or set RBUILD_CNI_PATH)",
            plugin_dir.display()
        )));
    }
    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", target.container_id)
        .env("CNI_NETNS", target.netns)
        .env("CNI_IFNAME", target.ifname)
        .env("CNI_PATH", plugin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("run CNI plugin", &binary, e))?;
    let input = serde_json::to_vec(conf).map_err(|e| Error::Network(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&input)
            .await
            .map_err(|e| Error::io("write to CNI plugin", &binary, e))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::io("run CNI plugin", &binary, e))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let msg = parsed
            .as_ref()
            .map(|v| {
                let details = v["details"].as_str().unwrap_or_default();
                format!(
                    "{}{}{details}",
                    v["msg"].as_str().unwrap_or_default(),
                    if details.is_empty() { "" } else { ": " }
                )
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        return Err(Error::Network(format!(
            "CNI plugin {kind} {command} for {}: {msg}",
            target.container_id
        )));
    }
    Ok(parsed.unwrap_or(Value::Null))
}

/// The namespace's address and gateway in an ADD result (CNI 1.0).
pub fn address_of(result: &Value) -> Result<(Ipv4Addr, Ipv4Addr), Error> {
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    for ip in ips {
        let Some(addr) = ip["address"].as_str() else {
            continue;
        };
        let Ok(addr) = addr
            .split('/')
            .next()
            .unwrap_or_default()
            .parse::<Ipv4Addr>()
        else {
            continue;
        };
        let gateway = ip["gateway"]
            .as_str()
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| Error::Network(format!("the CNI result for {addr} has no gateway")))?;
        return Ok((addr, gateway));
    }
    Err(Error::Network(format!(
        "the CNI result has no IPv4 address: {result}"
    )))
}

/// The host end of the namespace's veth in an ADD result.
pub fn host_veth(result: &Value) -> Option<String> {
    result["interfaces"]
        .as_array()?
        .iter()
        .find(|i| {
            i["sandbox"].is_null() && i["name"].as_str().is_some_and(|n| n.starts_with("veth"))
        })
        .and_then(|i| i["name"].as_str().map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_and_the_host_veth_come_from_the_result() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "rbuild0", "mac": "aa"},
                {"name": "veth1234", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/rbuild/netns/x"}
            ],
            "ips": [{"interface": 2, "address": "10.88.0.7/16", "gateway": "10.88.0.1"}]
        });
        assert_eq!(
            address_of(&result).unwrap(),
            (Ipv4Addr::new(10, 88, 0, 7), Ipv4Addr::new(10, 88, 0, 1))
        );
        assert_eq!(host_veth(&result).as_deref(), Some("veth1234"));
        assert!(address_of(&json!({"ips": []})).is_err());
    }

    #[test]
    fn each_plugin_gets_the_name_the_version_and_the_previous_result() {
        let list = bridge_conflist(
            "rb-test0",
            &"10.123.0.0/16".parse().unwrap(),
            Path::new("/run/x/ipam"),
            Path::new("/usr/lib/cni"),
        );
        let bridge = &list.plugins()[0];
        assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], "10.123.0.1");
        let conf = list.plugin_config(bridge, Some(&json!({"ips": []})));
        assert_eq!(conf["name"], "rbuild-rb-test0");
        assert_eq!(conf["cniVersion"], CNI_VERSION);
        assert_eq!(conf["prevResult"]["ips"], json!([]));
    }
}
