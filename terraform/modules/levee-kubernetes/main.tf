# A distributed Levee cluster on Kubernetes: `levee node` pods in a StatefulSet (stable
# names are the node names), autoscaled by a HorizontalPodAutoscaler on each pod's
# levee_load_ratio. ScyllaDB and Kafka are not run here: the nodes point at existing
# clusters. See README.md for the choices made (UDP addressing, drain hook, metrics).

locals {
  host_port   = var.client_addressing == "host_port"
  per_pod_lbs = var.client_addressing == "load_balancer"

  # Selector labels never change over the StatefulSet's life (a selector is immutable).
  selector_labels = {
    "app.kubernetes.io/name"     = "levee"
    "app.kubernetes.io/instance" = var.name
  }
  labels = merge(var.labels, local.selector_labels, {
    "app.kubernetes.io/component"  = "relay"
    "app.kubernetes.io/part-of"    = "levee"
    "app.kubernetes.io/managed-by" = "terraform"
  })

  namespace            = var.create_namespace ? kubernetes_namespace_v1.this[0].metadata[0].name : var.namespace
  headless_service     = "${var.name}-headless"
  admin_service        = "${var.name}-admin"
  secret_name          = var.existing_secret_name != null ? var.existing_secret_name : "${var.name}-secrets"
  config_dir           = "/etc/levee"
  data_dir             = "/data"
  tls_dir              = "/etc/levee-tls"
  admin_local          = "127.0.0.1:${var.admin_port}"
  node_names_max       = [for i in range(var.max_nodes) : "${var.name}-${i}"]
  cql_local_datacenter = coalesce(var.cql_local_datacenter, var.region)
  cql_replication = var.cql_replication != null ? var.cql_replication : {
    class   = "network_topology"
    factor  = null
    factors = { (var.region) = 3 }
  }

  # --- levee.toml -----------------------------------------------------------------------
  # Strings go through jsonencode: a JSON string is a valid TOML basic string. Fields typed
  # f64 in the node get a decimal point, as in docs/levee.example.toml.
  toml_float = {
    registration_max_per_s = floor(var.registration_max_per_s) == var.registration_max_per_s ? format("%.1f", var.registration_max_per_s) : tostring(var.registration_max_per_s)
    load_target_wait_s     = floor(var.load_target_wait_s) == var.load_target_wait_s ? format("%.1f", var.load_target_wait_s) : tostring(var.load_target_wait_s)
  }
  toml_region_pins = "[${join(", ", [
    for p in var.shard_region_pins : "{ shards = ${jsonencode(p.shards)}, regions = ${jsonencode(p.regions)} }"
  ])}]"
  toml_replication = local.cql_replication.class == "simple" ? join("\n", [
    "class = \"simple\"",
    "factor = ${local.cql_replication.factor}",
    ]) : join("\n", [
    "class = \"network_topology\"",
    "factors = { ${join(", ", [for dc, n in local.cql_replication.factors : "${jsonencode(dc)} = ${n}"])} }",
  ])

  # Top-level fields shared by every node. Not here, on purpose: cluster_key and
  # admin_token (from the Secret, as LEVEE_CLUSTER_KEY and LEVEE_ADMIN_TOKEN), node_name
  # (the pod's name, LEVEE_NODE_NAME) and, with host_port addressing, advertise_address
  # (the node's IP, LEVEE_ADVERTISE_ADDRESS).
  toml_top = join("\n", compact([
    "# levee.toml of the ${var.name} StatefulSet, rendered by the levee-kubernetes module.",
    "# Secrets are not in this file: they come from the Secret as environment variables.",
    "listen = \"0.0.0.0:${var.client_port}\"",
    "admin_listen = \"0.0.0.0:${var.admin_port}\"",
    "data_dir = ${jsonencode(local.data_dir)}",
    "region = ${jsonencode(var.region)}",
    "cluster_name = ${jsonencode(var.cluster_name)}",
    "shards = ${var.shards}",
    "drain_grace_ms = ${var.drain_grace_ms}",
    "registration_max_per_s = ${local.toml_float.registration_max_per_s}",
    "load_target_wait_s = ${local.toml_float.load_target_wait_s}",
    "region_pins = ${local.toml_region_pins}",
    var.tls_secret_name != null ? "tls_cert = \"${local.tls_dir}/tls.crt\"" : "",
    var.tls_secret_name != null ? "tls_key = \"${local.tls_dir}/tls.key\"" : "",
    trimspace(var.extra_config),
  ]))
  toml_sections = join("\n", [
    "",
    "[scylla]",
    "nodes = ${jsonencode(var.cql_contact_points)}",
    "keyspace = ${jsonencode(var.keyspace)}",
    "local_datacenter = ${jsonencode(local.cql_local_datacenter)}",
    "request_timeout_ms = ${var.cql_request_timeout_ms}",
    "",
    "[scylla.replication]",
    local.toml_replication,
    "",
    "[kafka]",
    "brokers = ${jsonencode(join(",", var.kafka_bootstrap_servers))}",
    "topic = ${jsonencode(var.kafka_topic)}",
    "replication = ${var.kafka_replication}",
    "retention_ms = ${var.kafka_retention_ms}",
    "",
  ])

  # load_balancer addressing: each node's address is its own load balancer's, so each
  # gets a file of its own (levee-0.toml, ...), chosen by the pod's name in its arguments.
  lb_ips = local.per_pod_lbs ? [
    for i in range(var.max_nodes) : length(var.load_balancer_ips) > 0 ? var.load_balancer_ips[i] : try(kubernetes_service_v1.client[i].status[0].load_balancer[0].ingress[0].ip, "")
  ] : []
  config_files = local.per_pod_lbs ? {
    for i, node in local.node_names_max :
    "${node}.toml" => "${local.toml_top}\nadvertise_address = \"${local.lb_ips[i]}:${var.client_port}\"\n${local.toml_sections}"
  } : { "levee.toml" = "${local.toml_top}\n${local.toml_sections}" }
  config_file = local.per_pod_lbs ? "${local.config_dir}/$(LEVEE_NODE_NAME).toml" : "${local.config_dir}/levee.toml"

  # HPA target as a Kubernetes quantity ("1", "800m").
  load_target_quantity = floor(var.load_target) == var.load_target ? tostring(var.load_target) : "${floor(var.load_target * 1000)}m"

  node_affinity_terms = concat(
    var.kubernetes_region != null ? [{ key = "topology.kubernetes.io/region", values = [var.kubernetes_region] }] : [],
    length(var.zones) > 0 ? [{ key = "topology.kubernetes.io/zone", values = var.zones }] : [],
  )
}

# ---------------------------------------------------------------------------------------
# Namespace, service account, configuration and secrets
# ---------------------------------------------------------------------------------------

resource "kubernetes_namespace_v1" "this" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name = var.namespace
    labels = merge(var.labels, {
      # Pod Security Admission. A hostPort is outside the baseline and restricted profiles,
      # so with host_port addressing the namespace must allow it ("privileged"); the pods
      # still meet "restricted" otherwise, and warnings and audit say where they do not.
      "pod-security.kubernetes.io/enforce" = local.host_port ? "privileged" : "restricted"
      "pod-security.kubernetes.io/warn"    = "restricted"
      "pod-security.kubernetes.io/audit"   = "restricted"
    })
  }
}

resource "kubernetes_service_account_v1" "this" {
  metadata {
    name      = var.name
    namespace = local.namespace
    labels    = local.labels
  }
  # A node never talks to the Kubernetes API.
  automount_service_account_token = false
}

resource "kubernetes_config_map_v1" "config" {
  metadata {
    name      = "${var.name}-config"
    namespace = local.namespace
    labels    = local.labels
  }
  data = local.config_files
}

resource "kubernetes_secret_v1" "secrets" {
  count = var.existing_secret_name == null ? 1 : 0

  metadata {
    name      = local.secret_name
    namespace = local.namespace
    labels    = local.labels
  }
  type = "Opaque"
  # The provider base64-encodes these. They are also in the Terraform state (sensitive, but
  # readable to whoever reads the state): protect the state, or use existing_secret_name.
  data = {
    cluster_key = var.cluster_key
    admin_token = var.admin_token
  }
}

# ---------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------

# Governs the StatefulSet's pod DNS names (levee-0.levee-headless.<ns>.svc): every pod,
# ready or not, so an operator can reach a starting node's admin port.
resource "kubernetes_service_v1" "headless" {
  metadata {
    name      = local.headless_service
    namespace = local.namespace
    labels    = local.labels
  }
  spec {
    cluster_ip                  = "None"
    publish_not_ready_addresses = true
    selector                    = local.selector_labels
    port {
      name        = "admin"
      port        = var.admin_port
      target_port = "admin"
      protocol    = "TCP"
    }
    port {
      name        = "quic"
      port        = var.client_port
      target_port = "quic"
      protocol    = "UDP"
    }
  }
}

# The admin/metrics port of the ready pods, for Prometheus (a ServiceMonitor or the
# endpoints role selects it by its labels) and for `levee node list --admin`.
resource "kubernetes_service_v1" "admin" {
  metadata {
    name      = local.admin_service
    namespace = local.namespace
    labels    = merge(local.labels, { "levee.dev/metrics" = "true" })
  }
  spec {
    type     = "ClusterIP"
    selector = local.selector_labels
    port {
      name        = "admin"
      port        = var.admin_port
      target_port = "admin"
      protocol    = "TCP"
    }
  }
}

# load_balancer addressing: one UDP load balancer per pod ordinal, selecting exactly that
# pod, so a redirect to a node's advertised address reaches that node. Made for every
# ordinal up to max_nodes, whether the pod exists at the moment or not.
resource "kubernetes_service_v1" "client" {
  count = local.per_pod_lbs ? var.max_nodes : 0

  metadata {
    name        = "${var.name}-${count.index}"
    namespace   = local.namespace
    labels      = local.labels
    annotations = var.load_balancer_annotations
  }
  spec {
    type = "LoadBalancer"
    selector = merge(local.selector_labels, {
      "statefulset.kubernetes.io/pod-name" = "${var.name}-${count.index}"
    })
    load_balancer_ip            = length(var.load_balancer_ips) > 0 ? var.load_balancer_ips[count.index] : null
    load_balancer_source_ranges = length(var.load_balancer_source_ranges) > 0 ? var.load_balancer_source_ranges : null
    # Local: the client's own address reaches the node (its per-network connection limits
    # key on it), and there is only one backend anyway.
    external_traffic_policy = "Local"
    port {
      name        = "quic"
      port        = var.client_port
      target_port = "quic"
      protocol    = "UDP"
    }
  }
  wait_for_load_balancer = true

  lifecycle {
    postcondition {
      condition     = length(var.load_balancer_ips) > 0 || try(self.status[0].load_balancer[0].ingress[0].ip, "") != ""
      error_message = "The load balancer reported no IP address (some, like AWS NLBs, report only a hostname). Reserve static IPs and pass them as load_balancer_ips, or use host_port addressing."
    }
  }
}

# ---------------------------------------------------------------------------------------
# The relays
# ---------------------------------------------------------------------------------------

resource "kubernetes_stateful_set_v1" "levee" {
  metadata {
    name      = var.name
    namespace = local.namespace
    labels    = local.labels
  }

  spec {
    service_name = kubernetes_service_v1.headless.metadata[0].name
    # The HPA owns the replica count after creation (see lifecycle below).
    replicas = tostring(var.min_nodes)
    # Start and stop pods in parallel: a scale-out of several nodes should not wait for
    # each to be ready in turn. Node names stay stable either way; rolling updates still
    # replace one pod at a time.
    pod_management_policy  = "Parallel"
    revision_history_limit = 5

    selector {
      match_labels = local.selector_labels
    }

    update_strategy {
      type = "RollingUpdate"
    }

    dynamic "persistent_volume_claim_retention_policy" {
      for_each = var.data_volume_size != null ? [1] : []
      content {
        when_deleted = "Delete"
        # Kept on scale-in, so <name>-N comes back with its certificate and fingerprint.
        when_scaled = "Retain"
      }
    }

    template {
      metadata {
        labels = local.labels
        annotations = {
          # A changed levee.toml rolls the pods (a ConfigMap change alone would not).
          "levee.dev/config-sha256" = sha256(jsonencode(local.config_files))
          "prometheus.io/scrape"    = "true"
          "prometheus.io/port"      = tostring(var.admin_port)
          "prometheus.io/path"      = "/metrics"
        }
      }

      spec {
        service_account_name            = kubernetes_service_account_v1.this.metadata[0].name
        automount_service_account_token = false
        # Service links would add <SERVICE>_PORT variables, some starting with LEVEE_, to
        # the environment the node reads its LEVEE_<FIELD> overrides from.
        enable_service_links = false
        # SIGTERM (after the preStop hook) drains the node: its shards go to the others,
        # its clients are told where to go, it leaves the roster and exits. That takes up
        # to drain_grace_ms for the clients plus the handover; only past this is it killed.
        termination_grace_period_seconds = var.termination_grace_period_seconds
        node_selector                    = length(var.node_selector) > 0 ? var.node_selector : null
        priority_class_name              = var.priority_class_name

        dynamic "image_pull_secrets" {
          for_each = var.image_pull_secrets
          content {
            name = image_pull_secrets.value
          }
        }

        security_context {
          run_as_non_root = true
          run_as_user     = tostring(var.run_as_user)
          run_as_group    = tostring(var.run_as_user)
          fs_group        = tostring(var.run_as_user)
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        affinity {
          dynamic "node_affinity" {
            for_each = length(local.node_affinity_terms) > 0 ? [1] : []
            content {
              required_during_scheduling_ignored_during_execution {
                node_selector_term {
                  dynamic "match_expressions" {
                    for_each = local.node_affinity_terms
                    content {
                      key      = match_expressions.value.key
                      operator = "In"
                      values   = match_expressions.value.values
                    }
                  }
                }
              }
            }
          }

          pod_anti_affinity {
            # host_port: two relays on one node would want the same UDP hostPort and
            # advertise the same address, so it is a rule. Otherwise a preference: one
            # node's failure should take as few relays as possible.
            dynamic "required_during_scheduling_ignored_during_execution" {
              for_each = local.host_port ? [1] : []
              content {
                topology_key = "kubernetes.io/hostname"
                label_selector {
                  match_labels = local.selector_labels
                }
              }
            }
            dynamic "preferred_during_scheduling_ignored_during_execution" {
              for_each = local.host_port ? [] : [1]
              content {
                weight = 100
                pod_affinity_term {
                  topology_key = "kubernetes.io/hostname"
                  label_selector {
                    match_labels = local.selector_labels
                  }
                }
              }
            }
          }
        }

        dynamic "topology_spread_constraint" {
          for_each = var.zone_spread ? [1] : []
          content {
            max_skew           = 1
            topology_key       = "topology.kubernetes.io/zone"
            when_unsatisfiable = "ScheduleAnyway"
            label_selector {
              match_labels = local.selector_labels
            }
          }
        }

        container {
          name              = "levee"
          image             = var.image
          image_pull_policy = var.image_pull_policy
          command           = [var.binary_path]
          # $(LEVEE_NODE_NAME) is expanded by Kubernetes (load_balancer addressing: each
          # node reads its own file, which holds its advertise_address).
          args = ["node", "--config", local.config_file]

          port {
            name           = "quic"
            container_port = var.client_port
            protocol       = "UDP"
            host_port      = local.host_port ? var.client_port : null
          }
          port {
            name           = "admin"
            container_port = var.admin_port
            protocol       = "TCP"
          }

          # node_name: the pod's name, unique and stable across restarts.
          env {
            name = "LEVEE_NODE_NAME"
            value_from {
              field_ref {
                field_path = "metadata.name"
              }
            }
          }

          # host_port addressing: clients reach the node on its node's IP at the hostPort.
          # Kubernetes expands $(HOST_IP), defined just before it.
          dynamic "env" {
            for_each = local.host_port ? [1] : []
            content {
              name = "HOST_IP"
              value_from {
                field_ref {
                  field_path = "status.hostIP"
                }
              }
            }
          }
          dynamic "env" {
            for_each = local.host_port ? [1] : []
            content {
              name  = "LEVEE_ADVERTISE_ADDRESS"
              value = "$(HOST_IP):${var.client_port}"
            }
          }

          # The secrets, from the Secret only: in neither the pod spec nor the ConfigMap.
          # Environment variables rather than mounted files because the node reads
          # cluster_key and admin_token from its config file or LEVEE_<FIELD> variables
          # only. LEVEE_ADMIN_TOKEN is also what `levee node drain` (the preStop hook)
          # authenticates with.
          env {
            name = "LEVEE_CLUSTER_KEY"
            value_from {
              secret_key_ref {
                name = local.secret_name
                key  = "cluster_key"
              }
            }
          }
          env {
            name = "LEVEE_ADMIN_TOKEN"
            value_from {
              secret_key_ref {
                name = local.secret_name
                key  = "admin_token"
              }
            }
          }

          dynamic "env" {
            for_each = var.extra_env
            content {
              name  = env.key
              value = env.value
            }
          }

          resources {
            requests = var.resources.requests
            limits   = var.resources.limits
          }

          security_context {
            run_as_non_root            = true
            run_as_user                = tostring(var.run_as_user)
            run_as_group               = tostring(var.run_as_user)
            privileged                 = false
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
            seccomp_profile {
              type = "RuntimeDefault"
            }
          }

          # The admin port answers once the node is in the roster with its first view (it
          # is served from then on), so it is the readiness signal too. Joining may take a
          # while on a first start (keyspace and topic creation): the startup probe allows
          # 5 minutes before liveness counts.
          startup_probe {
            http_get {
              path = "/metrics"
              port = "admin"
            }
            period_seconds    = 5
            timeout_seconds   = 3
            failure_threshold = 60
          }
          readiness_probe {
            http_get {
              path = "/admin/cluster"
              port = "admin"
            }
            period_seconds    = 5
            timeout_seconds   = 3
            failure_threshold = 2
          }
          liveness_probe {
            http_get {
              path = "/metrics"
              port = "admin"
            }
            period_seconds    = 10
            timeout_seconds   = 5
            failure_threshold = 6
          }

          lifecycle {
            # The drain hook. Kubernetes runs it before SIGTERM, on every voluntary stop
            # (HPA scale-in, rolling update, eviction, kubectl delete). It asks the node's
            # own admin port to drain, as `levee node drain` does (POST /admin/drain with
            # `authorization: Bearer $LEVEE_ADMIN_TOKEN`): the node starts handing its
            # shards over and moving its clients, and the hook returns. The SIGTERM that
            # follows asks for the same drain, which is already under way, and the node exits
            # when it is done, within drain_grace_ms plus the handover, all inside
            # termination_grace_period_seconds. A hook rather than relying on SIGTERM alone:
            # the drain starts through the documented admin call even with an image whose
            # stop signal differs, and a failure shows as a FailedPreStopHook event on the
            # pod. The image has no shell, so the hook runs the levee binary itself; a sleep
            # to let endpoints update would be pointless here, since clients address nodes
            # directly, not through a Service.
            pre_stop {
              exec {
                command = [var.binary_path, "node", "drain", "--admin", local.admin_local]
              }
            }
          }

          volume_mount {
            name       = "config"
            mount_path = local.config_dir
            read_only  = true
          }
          volume_mount {
            name       = "data"
            mount_path = local.data_dir
          }
          dynamic "volume_mount" {
            for_each = var.tls_secret_name != null ? [1] : []
            content {
              name       = "tls"
              mount_path = local.tls_dir
              read_only  = true
            }
          }
        }

        volume {
          name = "config"
          config_map {
            name         = kubernetes_config_map_v1.config.metadata[0].name
            default_mode = "0444"
          }
        }
        # data_dir holds only the node's self-signed TLS certificate. An emptyDir gives a
        # new certificate (and fingerprint) at every pod start; data_volume_size keeps it.
        dynamic "volume" {
          for_each = var.data_volume_size == null ? [1] : []
          content {
            name = "data"
            empty_dir {
              size_limit = "64Mi"
            }
          }
        }
        dynamic "volume" {
          for_each = var.tls_secret_name != null ? [1] : []
          content {
            name = "tls"
            secret {
              secret_name  = var.tls_secret_name
              default_mode = "0440"
            }
          }
        }
      }
    }

    dynamic "volume_claim_template" {
      for_each = var.data_volume_size != null ? [1] : []
      content {
        metadata {
          name   = "data"
          labels = local.labels
        }
        spec {
          access_modes       = ["ReadWriteOnce"]
          storage_class_name = var.data_storage_class
          resources {
            requests = {
              storage = var.data_volume_size
            }
          }
        }
      }
    }
  }

  lifecycle {
    # After creation the replica count belongs to the HPA (or to `kubectl scale` when
    # autoscaling is off); Terraform would otherwise reset it on every apply.
    ignore_changes = [spec[0].replicas]
  }

  depends_on = [kubernetes_secret_v1.secrets]
}

# ---------------------------------------------------------------------------------------
# Disruptions and autoscaling
# ---------------------------------------------------------------------------------------

# One relay at a time may be taken down voluntarily (node drains, cluster upgrades): each
# stop moves that relay's shards and clients, and two at once would move more at once.
# (HPA scale-in does not go through evictions; its own policy limits it.)
resource "kubernetes_pod_disruption_budget_v1" "levee" {
  metadata {
    name      = var.name
    namespace = local.namespace
    labels    = local.labels
  }
  spec {
    max_unavailable = "1"
    selector {
      match_labels = local.selector_labels
    }
  }
}

# desired = ceil(current × mean(levee_load_ratio) / load_target): the ratio is each node's
# load against its own targets (queueing delay, shedding, the waiting line's wait or its
# arrivals over its seats), so the Pods metric's average over the pods is what the formula
# wants. The metric reaches the HPA through the custom metrics API (prometheus-adapter; see
# README for the rule).
resource "kubernetes_horizontal_pod_autoscaler_v2" "levee" {
  count = var.autoscaling ? 1 : 0

  metadata {
    name      = var.name
    namespace = local.namespace
    labels    = local.labels
  }

  spec {
    min_replicas = var.min_nodes
    max_replicas = var.max_nodes

    scale_target_ref {
      api_version = "apps/v1"
      kind        = "StatefulSet"
      name        = kubernetes_stateful_set_v1.levee.metadata[0].name
    }

    metric {
      type = "Pods"
      pods {
        metric {
          name = "levee_load_ratio"
        }
        target {
          type          = "AverageValue"
          average_value = local.load_target_quantity
        }
      }
    }

    behavior {
      # Scale out at once when the ratio says so (a signup wave waits in line meanwhile),
      # by the larger of scale_up_max_pods and scale_up_max_percent per period.
      scale_up {
        stabilization_window_seconds = 0
        select_policy                = "Max"
        policy {
          type           = "Pods"
          value          = var.scale_up_max_pods
          period_seconds = var.scale_up_period_seconds
        }
        policy {
          type           = "Percent"
          value          = var.scale_up_max_percent
          period_seconds = var.scale_up_period_seconds
        }
      }
      # Scale in slowly: only to the highest recommendation of the last 5 minutes, and one
      # draining node at a time.
      scale_down {
        stabilization_window_seconds = var.scale_down_stabilization_seconds
        select_policy                = "Min"
        policy {
          type           = "Pods"
          value          = var.scale_down_max_pods
          period_seconds = var.scale_down_period_seconds
        }
      }
    }
  }
}

# ---------------------------------------------------------------------------------------
# Network policy
# ---------------------------------------------------------------------------------------

resource "kubernetes_network_policy_v1" "levee" {
  count = var.network_policy ? 1 : 0

  metadata {
    name      = var.name
    namespace = local.namespace
    labels    = local.labels
  }

  spec {
    pod_selector {
      match_labels = local.selector_labels
    }
    # Ingress only: the nodes' egress goes to ScyllaDB and Kafka clusters whose addresses
    # this module does not know.
    policy_types = ["Ingress"]

    # Clients, from anywhere, over QUIC.
    ingress {
      ports {
        port     = tostring(var.client_port)
        protocol = "UDP"
      }
    }

    # The admin port, from the namespaces that scrape or operate it.
    dynamic "ingress" {
      for_each = length(var.admin_allowed_namespaces) > 0 ? [1] : []
      content {
        ports {
          port     = tostring(var.admin_port)
          protocol = "TCP"
        }
        from {
          namespace_selector {
            match_expressions {
              key      = "kubernetes.io/metadata.name"
              operator = "In"
              values   = var.admin_allowed_namespaces
            }
          }
        }
      }
    }
  }
}
