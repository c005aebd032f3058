// holdfast/dashboard: the read-only web page of holders, orphans, queues and dead letters
// (the `holdfast dashboard` command), to mount in a process of your own.
export {
  type Dashboard,
  type DashboardOptions,
  dashboardDefaults,
  startDashboard,
} from "./server.js";
