# Plan-only tests of the relay pods: drain on stop, secrets, security, addressing.

mock_provider "kubernetes" {}

variables {
  image                   = "registry.example.com/levee@sha256:0000000000000000000000000000000000000000000000000000000000000000"
  region                  = "eu-west"
  cql_contact_points      = ["scylla-client.scylla.svc:9042"]
  kafka_bootstrap_servers = ["kafka-0.kafka.svc:9092", "kafka-1.kafka.svc:9092"]
  cluster_key             = "8f0e6d4c2b1a09f8e7d6c5b4a3928170ffeeddccbbaa99887766554433221100"
  admin_token             = "test-admin-token-not-a-secret"
  min_nodes               = 2
  max_nodes               = 7
}

run "a_stopping_pod_drains_within_its_grace_period" {
  command = plan

  assert {
    condition = (
      kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].lifecycle[0].pre_stop[0].exec[0].command ==
      tolist(["/usr/local/bin/levee", "node", "drain", "--admin", "127.0.0.1:9090"])
    )
    error_message = "the preStop hook must ask the node's own admin port to drain"
  }
  assert {
    condition     = kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].termination_grace_period_seconds == 60
    error_message = "terminationGracePeriodSeconds must default to 60"
  }
  assert {
    condition     = kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].termination_grace_period_seconds * 1000 > var.drain_grace_ms
    error_message = "terminationGracePeriodSeconds must exceed the drain bound (drain_grace_ms)"
  }
  assert {
    condition     = strcontains(kubernetes_config_map_v1.config.data["levee.toml"], "drain_grace_ms = 5000\n")
    error_message = "levee.toml must carry the drain bound the grace period is checked against"
  }
}

run "the_cluster_key_is_in_the_secret_not_the_config_map" {
  command = plan

  assert {
    condition = nonsensitive(alltrue([
      for v in values(kubernetes_config_map_v1.config.data) : !strcontains(v, var.cluster_key) && !strcontains(v, var.admin_token)
    ]))
    error_message = "neither the cluster key nor the admin token may appear in the ConfigMap"
  }
  assert {
    condition     = !strcontains(kubernetes_config_map_v1.config.data["levee.toml"], "cluster_key")
    error_message = "levee.toml must not set cluster_key at all"
  }
  assert {
    condition     = nonsensitive(kubernetes_secret_v1.secrets[0].data["cluster_key"] == var.cluster_key)
    error_message = "the Secret must hold the cluster key"
  }
  assert {
    condition = one([
      for e in kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].env :
      "${e.value_from[0].secret_key_ref[0].name}/${e.value_from[0].secret_key_ref[0].key}" if e.name == "LEVEE_CLUSTER_KEY"
    ]) == "${kubernetes_secret_v1.secrets[0].metadata[0].name}/cluster_key"
    error_message = "LEVEE_CLUSTER_KEY must come from the Secret's cluster_key"
  }
  assert {
    condition = alltrue([
      for e in kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].env :
      e.value == null || e.value == "" if contains(["LEVEE_CLUSTER_KEY", "LEVEE_ADMIN_TOKEN"], e.name)
    ])
    error_message = "the secrets must not be literal values in the pod spec"
  }
}

run "the_config_map_holds_the_backends_and_settings" {
  command = plan

  variables {
    registration_max_per_s = 250
    shard_region_pins      = [{ shards = [0, 1], regions = ["eu-west"] }]
  }

  assert {
    condition = alltrue([for line in [
      "listen = \"0.0.0.0:4433\"",
      "admin_listen = \"0.0.0.0:9090\"",
      "region = \"eu-west\"",
      "shards = 256",
      "registration_max_per_s = 250.0",
      "load_target_wait_s = 30.0",
      "region_pins = [{ shards = [0,1], regions = [\"eu-west\"] }]",
      "nodes = [\"scylla-client.scylla.svc:9042\"]",
      "factors = { \"eu-west\" = 3 }",
      "brokers = \"kafka-0.kafka.svc:9092,kafka-1.kafka.svc:9092\"",
      "topic = \"levee-delivery\"",
    ] : strcontains(kubernetes_config_map_v1.config.data["levee.toml"], "${line}\n")])
    error_message = "levee.toml is missing a setting: ${kubernetes_config_map_v1.config.data["levee.toml"]}"
  }
}

run "pods_run_locked_down" {
  command = plan

  assert {
    condition = (
      kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].security_context[0].run_as_non_root &&
      kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].security_context[0].seccomp_profile[0].type == "RuntimeDefault"
    )
    error_message = "the pod must run as non-root with the RuntimeDefault seccomp profile"
  }
  assert {
    condition = (
      kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].security_context[0].read_only_root_filesystem &&
      !kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].security_context[0].allow_privilege_escalation &&
      kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].security_context[0].capabilities[0].drop == tolist(["ALL"])
    )
    error_message = "the container must have a read-only root, no privilege escalation and no capabilities"
  }
  assert {
    condition     = !kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].automount_service_account_token
    error_message = "the pods must not get an API token"
  }
  assert {
    condition = alltrue([
      for m in [
        kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].resources[0].requests,
        kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].resources[0].limits,
      ] : contains(keys(m), "cpu") && contains(keys(m), "memory")
    ])
    error_message = "the container must have CPU and memory requests and limits"
  }
  assert {
    condition = alltrue([
      for probe in [
        kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].startup_probe[0],
        kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].readiness_probe[0],
        kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].liveness_probe[0],
      ] : probe.http_get[0].port == "admin"
    ])
    error_message = "startup, readiness and liveness probes must ask the admin port"
  }
  assert {
    condition     = !kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].enable_service_links
    error_message = "service links would put LEVEE_*_PORT variables into the node's environment"
  }
}

run "host_port_addressing_advertises_the_node_ip" {
  command = plan

  assert {
    condition = one([
      for e in kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].env :
      e.value if e.name == "LEVEE_ADVERTISE_ADDRESS"
    ]) == "$(HOST_IP):4433"
    error_message = "LEVEE_ADVERTISE_ADDRESS must be the node's IP at the client port"
  }
  assert {
    condition = one([
      for p in kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].port :
      p.host_port if p.name == "quic"
    ]) == 4433
    error_message = "the QUIC port must be a UDP hostPort"
  }
  assert {
    condition     = length(kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].affinity[0].pod_anti_affinity[0].required_during_scheduling_ignored_during_execution) == 1
    error_message = "two relays must never share a node with host_port addressing"
  }
  assert {
    condition     = length(kubernetes_service_v1.client) == 0
    error_message = "host_port addressing makes no load balancers"
  }
}

run "load_balancer_addressing_gives_each_ordinal_its_own_address" {
  command = plan

  variables {
    client_addressing = "load_balancer"
    max_nodes         = 3
    load_balancer_ips = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]
  }

  assert {
    condition     = length(kubernetes_service_v1.client) == 3
    error_message = "one load balancer per possible node"
  }
  assert {
    condition     = kubernetes_service_v1.client[2].spec[0].selector["statefulset.kubernetes.io/pod-name"] == "levee-2"
    error_message = "each load balancer must select its own pod"
  }
  assert {
    condition     = strcontains(kubernetes_config_map_v1.config.data["levee-1.toml"], "advertise_address = \"203.0.113.11:4433\"\n")
    error_message = "each node's file must advertise its load balancer"
  }
  assert {
    condition     = contains(kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].args, "/etc/levee/$(LEVEE_NODE_NAME).toml")
    error_message = "each pod must read its own file"
  }
  assert {
    condition     = output.client_addresses["levee-0"] == "203.0.113.10:4433"
    error_message = "client_addresses must list the advertised addresses"
  }
}

run "an_existing_secret_replaces_the_created_one" {
  command = plan

  variables {
    cluster_key          = null
    admin_token          = null
    existing_secret_name = "levee-from-vault"
  }

  assert {
    condition     = length(kubernetes_secret_v1.secrets) == 0
    error_message = "no Secret may be created when existing_secret_name is set"
  }
  assert {
    condition = alltrue([
      for e in kubernetes_stateful_set_v1.levee.spec[0].template[0].spec[0].container[0].env :
      e.value_from[0].secret_key_ref[0].name == "levee-from-vault" if contains(["LEVEE_CLUSTER_KEY", "LEVEE_ADMIN_TOKEN"], e.name)
    ])
    error_message = "the secrets must come from existing_secret_name"
  }
}
