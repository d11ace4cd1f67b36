// Starts Swagger UI on keel's own OpenAPI document. Served as a file, not inline, so the
// page's Content-Security-Policy needs no 'unsafe-inline'.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: true,
  });
});
