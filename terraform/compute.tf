# GPU replicas: an instance template on Container-Optimized OS running the CUDA image,
# in a regional managed instance group with autohealing on /healthz and autoscaling on
# load-balancer utilisation (and CPU as a second signal).

data "google_compute_image" "cos" {
  project = "cos-cloud"
  family  = var.cos_image_family
}

locals {
  cloud_init = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    image              = var.image
    registry_host      = local.registry_host
    project_id         = var.project_id
    db_password_secret = google_secret_manager_secret.this["db-password"].secret_id
    admin_key_secret   = google_secret_manager_secret.this["admin-key"].secret_id
    redis_auth_secret  = google_secret_manager_secret.this["redis-auth"].secret_id
    db_user            = local.db_user
    db_name            = local.db_name
    sql_connection     = google_sql_database_instance.this.connection_name
    proxy_image        = var.cloud_sql_proxy_image
    redis_host         = google_redis_instance.this.host
    redis_port         = google_redis_instance.this.port
    bucket             = google_storage_bucket.photos.name
    rust_log           = var.rust_log
    extra_env_b64      = base64encode(join("", [for k in sort(keys(var.rollcall_env)) : "${k}=${var.rollcall_env[k]}\n"]))
  })
}

resource "google_compute_instance_template" "rollcall" {
  name_prefix  = "${var.name}-"
  description  = "Rollcall GPU replica (COS + ${var.image})"
  machine_type = var.machine_type
  region       = var.region
  tags         = [local.vm_tag]
  labels       = local.labels

  disk {
    source_image = data.google_compute_image.cos.self_link
    boot         = true
    auto_delete  = true
    disk_type    = "pd-balanced"
    disk_size_gb = var.boot_disk_size_gb
  }

  # Private address only; egress through Cloud NAT and Private Google Access.
  network_interface {
    subnetwork = google_compute_subnetwork.this.id
  }

  dynamic "guest_accelerator" {
    for_each = var.gpu_count > 0 ? [1] : []
    content {
      type  = var.gpu_type
      count = var.gpu_count
    }
  }

  # GPU VMs cannot live-migrate: they stop for host maintenance and restart.
  scheduling {
    on_host_maintenance         = "TERMINATE"
    automatic_restart           = !var.spot
    preemptible                 = var.spot
    provisioning_model          = var.spot ? "SPOT" : "STANDARD"
    instance_termination_action = var.spot ? "DELETE" : null
  }

  service_account {
    email  = google_service_account.vm.email
    scopes = ["cloud-platform"] # access is bounded by the account's IAM roles (iam.tf)
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = {
    user-data                 = local.cloud_init
    google-logging-enabled    = "true"
    google-monitoring-enabled = "true"
    block-project-ssh-keys    = "true"
    enable-oslogin            = "TRUE"
    serial-port-enable        = "FALSE"
    # OS updates arrive by replacing the template (new COS image), not by reboots
    # in the middle of serving.
    cos-update-strategy = "update_disabled"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Liveness, for autohealing: the process answers.
resource "google_compute_health_check" "liveness" {
  name                = "${var.name}-healthz"
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 6

  http_health_check {
    port         = 8080
    request_path = "/healthz"
  }

  log_config {
    enable = true
  }

  depends_on = [google_project_service.apis]
}

# Readiness, for the load balancer: models loaded and database reachable.
resource "google_compute_health_check" "readiness" {
  name                = "${var.name}-readyz"
  check_interval_sec  = 5
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 3

  http_health_check {
    port         = 8080
    request_path = "/readyz"
  }

  log_config {
    enable = true
  }

  depends_on = [google_project_service.apis]
}

resource "google_compute_region_instance_group_manager" "rollcall" {
  name                      = "${var.name}-mig"
  region                    = var.region
  base_instance_name        = var.name
  distribution_policy_zones = var.zones
  wait_for_instances        = false

  version {
    name              = "primary"
    instance_template = google_compute_instance_template.rollcall.id
  }

  named_port {
    name = "http"
    port = 8080
  }

  auto_healing_policies {
    health_check = google_compute_health_check.liveness.id
    # Driver install, image pull and model load on a fresh VM take several minutes.
    initial_delay_sec = 900
  }

  # Zero-downtime rollouts: new VMs come up (one per zone at most) before old ones go.
  update_policy {
    type                         = "PROACTIVE"
    minimal_action               = "REPLACE"
    instance_redistribution_type = "PROACTIVE"
    replacement_method           = "SUBSTITUTE"
    max_surge_fixed              = length(var.zones)
    max_unavailable_fixed        = 0
  }

  # The autoscaler owns the size.
  lifecycle {
    ignore_changes = [target_size]
  }
}

resource "google_compute_region_autoscaler" "rollcall" {
  name   = "${var.name}-autoscaler"
  region = var.region
  target = google_compute_region_instance_group_manager.rollcall.id

  autoscaling_policy {
    min_replicas    = var.min_replicas
    max_replicas    = max(var.max_replicas, var.min_replicas)
    cooldown_period = 600
    mode            = "ON"

    load_balancing_utilization {
      target = 0.8
    }

    cpu_utilization {
      target = 0.7
    }

    scale_in_control {
      time_window_sec = 900
      max_scaled_in_replicas {
        fixed = 1
      }
    }
  }
}
