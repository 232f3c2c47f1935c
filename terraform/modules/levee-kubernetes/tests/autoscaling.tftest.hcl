# Plan-only tests of the module against a mocked kubernetes provider (no cluster needed):
# `tofu test` in the module's directory; scripts/check-terraform.sh runs them.
#
# The HorizontalPodAutoscaler and the PodDisruptionBudget.

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

run "hpa_replica_bounds_are_min_and_max_nodes" {
  command = plan

  assert {
    condition     = kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].min_replicas == 2
    error_message = "the HPA's minReplicas must be min_nodes"
  }
  assert {
    condition     = kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].max_replicas == 7
    error_message = "the HPA's maxReplicas must be max_nodes"
  }
  assert {
    condition     = kubernetes_stateful_set_v1.levee.spec[0].replicas == "2"
    error_message = "the StatefulSet must start with min_nodes replicas"
  }
  assert {
    condition = (
      kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].scale_target_ref[0].kind == "StatefulSet" &&
      kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].scale_target_ref[0].name == "levee"
    )
    error_message = "the HPA must scale the levee StatefulSet"
  }
  assert {
    condition     = output.node_names == ["levee-0", "levee-1"]
    error_message = "node_names must be levee-0 .. levee-(min_nodes-1)"
  }
  assert {
    condition     = length(output.possible_node_names) == 7 && output.possible_node_names[6] == "levee-6"
    error_message = "possible_node_names must run up to levee-(max_nodes-1)"
  }
}

run "hpa_targets_an_average_levee_load_ratio_of_1_per_pod" {
  command = plan

  assert {
    condition     = length(kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].metric) == 1
    error_message = "the HPA must have exactly one metric"
  }
  assert {
    condition     = kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].metric[0].type == "Pods"
    error_message = "levee_load_ratio is per pod: the metric must be of type Pods"
  }
  assert {
    condition     = kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].metric[0].pods[0].metric[0].name == "levee_load_ratio"
    error_message = "the HPA's metric must be levee_load_ratio"
  }
  assert {
    condition     = kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].metric[0].pods[0].target[0].type == "AverageValue"
    error_message = "the target must be an AverageValue"
  }
  assert {
    condition     = kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].metric[0].pods[0].target[0].average_value == "1"
    error_message = "the default target average value must be 1"
  }
}

run "hpa_scales_out_at_once_and_in_slowly" {
  command = plan

  assert {
    condition     = kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].behavior[0].scale_up[0].stabilization_window_seconds == 0
    error_message = "scale-up must not be stabilised"
  }
  assert {
    condition     = kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].behavior[0].scale_down[0].stabilization_window_seconds == 300
    error_message = "scale-down must be stabilised over 300 s"
  }
  assert {
    condition = alltrue([
      for p in kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].behavior[0].scale_down[0].policy :
      p.type == "Pods" && p.value == 1
    ])
    error_message = "scale-down must remove one pod per period"
  }
}

run "a_fractional_load_target_is_a_milli_quantity" {
  command = plan

  variables {
    load_target = 0.8
  }

  assert {
    condition     = kubernetes_horizontal_pod_autoscaler_v2.levee[0].spec[0].metric[0].pods[0].target[0].average_value == "800m"
    error_message = "load_target 0.8 must be the quantity 800m"
  }
}

run "autoscaling_off_makes_no_hpa" {
  command = plan

  variables {
    autoscaling = false
  }

  assert {
    condition     = length(kubernetes_horizontal_pod_autoscaler_v2.levee) == 0
    error_message = "autoscaling = false must not create an HPA (KEDA makes its own)"
  }
}

run "pdb_allows_one_unavailable_relay" {
  command = plan

  assert {
    condition     = kubernetes_pod_disruption_budget_v1.levee.spec[0].max_unavailable == "1"
    error_message = "the PDB must allow at most one unavailable relay"
  }
  assert {
    condition     = kubernetes_pod_disruption_budget_v1.levee.spec[0].selector[0].match_labels == kubernetes_stateful_set_v1.levee.spec[0].selector[0].match_labels
    error_message = "the PDB must select the StatefulSet's pods"
  }
}
