# Global external Application Load Balancer: HTTPS on var.domain with a Google-managed
# certificate and a modern TLS policy; plain HTTP only redirects to HTTPS.

resource "google_compute_global_address" "lb" {
  name = "${var.name}-lb-ip"

  depends_on = [google_project_service.apis]
}

resource "google_compute_managed_ssl_certificate" "this" {
  name = "${var.name}-cert-${substr(sha256(var.domain), 0, 8)}"

  managed {
    domains = [var.domain]
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_ssl_policy" "modern" {
  name            = "${var.name}-tls"
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"
}

resource "google_compute_backend_service" "rollcall" {
  name                            = "${var.name}-backend"
  protocol                        = "HTTP"
  port_name                       = "http"
  load_balancing_scheme           = "EXTERNAL_MANAGED"
  timeout_sec                     = 60
  connection_draining_timeout_sec = 30
  health_checks                   = [google_compute_health_check.readiness.id]

  backend {
    group                 = google_compute_region_instance_group_manager.rollcall.instance_group
    balancing_mode        = "RATE"
    max_rate_per_instance = var.target_rps_per_replica
    capacity_scaler       = 1.0
  }

  log_config {
    enable      = true
    sample_rate = 1.0
  }
}

resource "google_compute_url_map" "https" {
  name            = "${var.name}-https"
  default_service = google_compute_backend_service.rollcall.id

  host_rule {
    hosts        = ["*"]
    path_matcher = "rollcall"
  }

  path_matcher {
    name            = "rollcall"
    default_service = google_compute_backend_service.rollcall.id

    # Prometheus metrics are not published: scrape them inside the VPC on each VM's
    # :8080/metrics. The public path answers with a redirect to the home page.
    path_rule {
      paths = ["/metrics", "/metrics/*"]
      url_redirect {
        path_redirect          = "/"
        redirect_response_code = "FOUND"
        strip_query            = true
      }
    }
  }
}

resource "google_compute_target_https_proxy" "this" {
  name             = "${var.name}-https-proxy"
  url_map          = google_compute_url_map.https.id
  ssl_certificates = [google_compute_managed_ssl_certificate.this.id]
  ssl_policy       = google_compute_ssl_policy.modern.id
}

resource "google_compute_global_forwarding_rule" "https" {
  name                  = "${var.name}-https"
  ip_address            = google_compute_global_address.lb.id
  ip_protocol           = "TCP"
  port_range            = "443"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  target                = google_compute_target_https_proxy.this.id
}

# Port 80 answers with a permanent redirect to HTTPS and never reaches the backends.
resource "google_compute_url_map" "http_redirect" {
  name = "${var.name}-http-redirect"

  default_url_redirect {
    https_redirect         = true
    redirect_response_code = "MOVED_PERMANENTLY_DEFAULT"
    strip_query            = false
  }
}

resource "google_compute_target_http_proxy" "redirect" {
  name    = "${var.name}-http-proxy"
  url_map = google_compute_url_map.http_redirect.id
}

resource "google_compute_global_forwarding_rule" "http_redirect" {
  name                  = "${var.name}-http"
  ip_address            = google_compute_global_address.lb.id
  ip_protocol           = "TCP"
  port_range            = "80"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  target                = google_compute_target_http_proxy.redirect.id
}

# Optional: the A record, when the domain's zone is in Cloud DNS in this project.
resource "google_dns_record_set" "domain" {
  count = var.dns_managed_zone == null ? 0 : 1

  managed_zone = var.dns_managed_zone
  name         = "${var.domain}."
  type         = "A"
  ttl          = 300
  rrdatas      = [google_compute_global_address.lb.address]
}
