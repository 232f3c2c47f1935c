# Inputs the module refuses.

mock_provider "kubernetes" {}

variables {
  image                   = "registry.example.com/levee@sha256:0000000000000000000000000000000000000000000000000000000000000000"
  region                  = "eu-west"
  cql_contact_points      = ["scylla-client.scylla.svc:9042"]
  kafka_bootstrap_servers = ["kafka-0.kafka.svc:9092"]
  cluster_key             = "8f0e6d4c2b1a09f8e7d6c5b4a3928170ffeeddccbbaa99887766554433221100"
  admin_token             = "test-admin-token-not-a-secret"
}

run "min_nodes_above_max_nodes_is_refused" {
  command = plan

  variables {
    min_nodes = 5
    max_nodes = 4
  }

  expect_failures = [var.max_nodes]
}

run "zero_min_nodes_is_refused" {
  command = plan

  variables {
    min_nodes = 0
  }

  expect_failures = [var.min_nodes]
}

run "a_grace_period_shorter_than_the_drain_is_refused" {
  command = plan

  variables {
    drain_grace_ms                   = 45000
    termination_grace_period_seconds = 60
  }

  expect_failures = [var.termination_grace_period_seconds]
}

run "a_short_cluster_key_is_refused" {
  command = plan

  variables {
    cluster_key = "abcdef"
  }

  expect_failures = [var.cluster_key]
}

run "secrets_are_required_without_an_existing_secret" {
  command = plan

  variables {
    cluster_key = null
  }

  expect_failures = [var.existing_secret_name]
}

run "an_unpinned_image_is_refused" {
  command = plan

  variables {
    image = "registry.example.com/levee:latest"
  }

  expect_failures = [var.image]
}

run "too_few_static_load_balancer_ips_are_refused" {
  command = plan

  variables {
    client_addressing = "load_balancer"
    max_nodes         = 3
    load_balancer_ips = ["203.0.113.10"]
  }

  expect_failures = [var.max_nodes]
}

run "secrets_in_extra_config_are_refused" {
  command = plan

  variables {
    extra_config = "cluster_key = \"00112233445566778899aabbccddeeff\""
  }

  expect_failures = [var.extra_config]
}
